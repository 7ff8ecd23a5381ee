// The CUDA backend's host code (csrc/cuda/rnn_cuda.cu, which includes the persistent kernel,
// csrc/cuda/persistent.cuh) built for the CPU under the SIMT emulator, registered as
// torch.ops.fusedrnn_persistent_emulated.* for tests/test_persistent_emulated.py. The path is
// selected at run time by FUSEDRNN_PERSISTENT exactly as on the GPU (the emulated device has
// 3 SMs, so a layer runs as a grid of up to 3 cooperative CTAs of 64 threads).
#define FUSEDRNN_EMULATED
#include "../../csrc/cuda/rnn_cuda.cu"

namespace {
// The FUSEDRNN_PERSISTENT=auto verdict for a float32 LSTM layer (variant 0) of batch B, hidden H
// and norm code `norm` on the emulated device: "" when auto picks the persistent kernel, else why not.
std::string persist_auto_why(int64_t B, int64_t H, int64_t norm) {
  using namespace fusedrnn::cuda;
  const PersistDevice dev = persist_device();
  const PersistPlan plan = persist_plan(int(norm), false, 4, int(H), int(B), dev.sms, dev.smem_max, kPersistThreads, 4);
  std::string why;
  persist_selected("persist_auto_why", PersistMode::kAuto, dev, plan, at::kFloat, norm, 1, B, H, &why);
  return why;
}

// One CTA of 64 threads runs the persistent kernels' recurrent product (persist_product) on
// shared-memory copies of W [R, K] and X [nb, K]: out[b * ldo + r] = sum_k W[r, k] X[b, k],
// rounded to T. Shared memory starts as NaN, so entries the product must not write stay NaN.
template <typename T>
__global__ void persist_product_kernel(const T* W, int R, const T* X, int nb, int K, int ldo, int mma, float* out) {
  using namespace fusedrnn::cuda;
  SIMT_DYNAMIC_SHARED(float, smem);
  float *w = smem, *x = w + long(R) * K, *o = x + long(nb) * K, *red = o + long(nb) * ldo;
  for (long e = threadIdx.x; e < long(R) * K; e += blockDim.x) w[e] = float(W[e]);
  for (long e = threadIdx.x; e < long(nb) * K; e += blockDim.x) x[e] = float(X[e]);
  __syncthreads();
  persist_product<T, float>(mma, w, R, x, nb, K, o, ldo, red);
  __syncthreads();
  for (long e = threadIdx.x; e < long(nb) * ldo; e += blockDim.x) out[e] = o[e];
}

// out [nb, ldo] (float) for W [R, K], X [nb, K] of float32 / float16 / bfloat16; mma as
// PersistentLstmFwd::mma.
at::Tensor persist_product_emulated(const at::Tensor& W, const at::Tensor& X, int64_t ldo, int64_t mma) {
  TORCH_CHECK(W.dim() == 2 && X.dim() == 2 && W.size(1) == X.size(1) && ldo >= W.size(0) &&
                  W.scalar_type() == X.scalar_type(), "persist_product_emulated: W [R, K], X [nb, K], ldo >= R");
  const at::Tensor w = W.contiguous(), x = X.contiguous();
  const int R = int(w.size(0)), nb = int(x.size(0)), K = int(w.size(1)), threads = 64;
  at::Tensor out = at::empty({nb, ldo}, w.options().dtype(at::kFloat));
  const size_t smem = sizeof(float) * (size_t(R + nb) * K + size_t(nb) * ldo +
                                       size_t(threads / 32) * fusedrnn::cuda::kPersistTile * 33);
  auto run = [&](auto zero) {
    using T = decltype(zero);
    simt::launch(persist_product_kernel<T>, dim3(1), dim3(threads), smem, nullptr, w.data_ptr<T>(), R,
                 x.data_ptr<T>(), nb, K, int(ldo), int(mma), out.data_ptr<float>());
  };
  switch (w.scalar_type()) {
    case at::kFloat: run(float(0)); break;
    case at::kHalf: run(c10::Half(0)); break;
    case at::kBFloat16: run(c10::BFloat16(0)); break;
    default: TORCH_CHECK(false, "persist_product_emulated: float32, float16 or bfloat16, got ", w.scalar_type());
  }
  return out;
}

// persist_stage on one CTA of 64 threads: shared[e] = src[e] for e < n, shared memory sized for
// n + 64 floats (the rest stays NaN: the copy must not write past n). Returns the shared memory.
__global__ void persist_stage_kernel(const float* src, long n, float* out) {
  SIMT_DYNAMIC_SHARED(float, smem);
  fusedrnn::cuda::persist_stage<float>(smem, n, [&](long e) { return src[e]; });
  __syncthreads();
  for (long e = threadIdx.x; e < n + 64; e += blockDim.x) out[e] = smem[e];
}

at::Tensor persist_stage_emulated(const at::Tensor& src) {
  TORCH_CHECK(src.dim() == 1 && src.scalar_type() == at::kFloat, "persist_stage_emulated: a 1-d float32 tensor");
  const at::Tensor s = src.contiguous();
  const long n = long(s.numel());
  at::Tensor out = at::empty({n + 64}, s.options());
  simt::launch(persist_stage_kernel, dim3(1), dim3(64), sizeof(float) * size_t(n + 64), nullptr, s.data_ptr<float>(),
               n, out.data_ptr<float>());
  return out;
}

// Warp-level mma.sync executions in this process so far (the emulator counts them).
int64_t mma_executed() { return simt::mma_executed.load(); }
}  // namespace

TORCH_LIBRARY(fusedrnn_persistent_emulated, m) {
  FUSEDRNN_CUDA_OPS(m);
  m.def("persist_auto_why", &persist_auto_why);
  m.def("persist_product", &persist_product_emulated);
  m.def("mma_executed", &mma_executed);
  m.def("persist_stage", &persist_stage_emulated);
}

// The CUDA pointwise kernels (csrc/cuda/pointwise.cuh) built for the CPU under the SIMT
// emulator, exposed with a C ABI for tests/test_cuda_emulated.py (ctypes). The host loops and
// GEMMs live in that test, mirroring csrc/cuda/rnn_cuda.cu; the kernels are the same source.
// Each entry point returns 0, or 1 with the emulator's error message in err.
#include <cstdio>
#include <stdexcept>

#include "../../csrc/cuda/pointwise.cuh"

using namespace fusedrnn::cuda;

template <typename F>
static int guarded(F f, char* err, int n) {
  try {
    f();
    return 0;
  } catch (std::exception& e) {
    std::snprintf(err, n, "%s", e.what());
    return 1;
  }
}

#define FUSEDRNN_EMULATED_ENTRY(suffix, T)                                                          \
  extern "C" int lstm_step_fwd_##suffix(const LstmStepFwd<T>* p, int norm, char* err, int n) {      \
    return guarded([&] { lstm_step_fwd<T>(*p, norm, nullptr); }, err, n);                           \
  }                                                                                                  \
  extern "C" int lstm_step_bwd_##suffix(const LstmStepBwd<T>* p, int norm, char* err, int n) {      \
    return guarded([&] { lstm_step_bwd<T>(*p, norm, nullptr); }, err, n);                           \
  }                                                                                                  \
  extern "C" int gru_step_fwd_##suffix(const GruStepFwd<T>* p, int norm, char* err, int n) {        \
    return guarded([&] { gru_step_fwd<T>(*p, norm, nullptr); }, err, n);                            \
  }                                                                                                  \
  extern "C" int gru_step_bwd_##suffix(const GruStepBwd<T>* p, int norm, char* err, int n) {        \
    return guarded([&] { gru_step_bwd<T>(*p, norm, nullptr); }, err, n);                            \
  }                                                                                                  \
  extern "C" int rnn_step_fwd_##suffix(const RnnStepFwd<T>* p, int, char* err, int n) {             \
    return guarded([&] { rnn_step_fwd<T>(*p, nullptr); }, err, n);                                  \
  }                                                                                                  \
  extern "C" int rnn_step_bwd_##suffix(const RnnStepBwd<T>* p, int, char* err, int n) {             \
    return guarded([&] { rnn_step_bwd<T>(*p, nullptr); }, err, n);                                  \
  }

FUSEDRNN_EMULATED_ENTRY(f32, float)
FUSEDRNN_EMULATED_ENTRY(f64, double)

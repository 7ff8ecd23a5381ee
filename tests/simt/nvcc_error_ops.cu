// The CUDA backend's host code compiled by nvcc exactly as for the GPU (no FUSEDRNN_EMULATED),
// with lstm_fwd / gru_fwd also registered under a schema that dispatches CPU tensors here: they
// fail check_x ("expected tensors on cuda"), so an argument error is thrown from nvcc-compiled
// frames and must arrive in Python as a RuntimeError -- no GPU needed
// (tests/test_cuda_emulated_ops.py::test_nvcc_built_error_path).
#include "../../csrc/cuda/rnn_cuda.cu"

TORCH_LIBRARY(fusedrnn_nvcc_errors, m) {
  m.def("lstm_fwd", &fusedrnn::cuda::lstm_fwd);
  m.def("gru_fwd", &fusedrnn::cuda::gru_fwd);
  m.def("rnn_fwd", &fusedrnn::cuda::rnn_fwd);
}

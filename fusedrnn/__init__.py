"""fusedrnn: fused LSTM-family recurrent networks (LSTM variants, LN/BN-LSTM, GRU, RNN) for PyTorch."""
from ._ops import cpu_cache_info, cpu_gemm_info, empty_cpu_cache
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .spec import CellSpec

__version__ = "0.1.0"
__all__ = ["CellSpec", "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "cpu_cache_info", "cpu_gemm_info",
           "empty_cpu_cache", "__version__"]

"""fusedrnn: fused recurrent-network kernels with drop-in torch.nn layers."""

from . import backends, ops
from .backends import available_backends, recurrence
from .nn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__version__ = "0.1.0"

__all__ = [
    "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell",
    "recurrence", "available_backends", "backends", "ops",
]
from . import diagnostics, models, training  # noqa: E402  (issue 8: toolkit)
from .scan import linear_scan, log_linear_scan; from .nn.minrnn import MinGRU, MinLSTM  # noqa: E402,E702  (issue 7)

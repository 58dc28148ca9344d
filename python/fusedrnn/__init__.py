"""fusedrnn: fused recurrent-network kernels with drop-in torch.nn layers."""

from . import backends, ops
from .backends import available_backends, recurrence
from .nn import (GRU, LSTM, RNN, GRUCell, LayerNormGRU, LayerNormGRUCell, LayerNormLSTM,
                 LayerNormLSTMCell, LSTMCell, MinGRU, MinLSTM, RNNCell)
from .scan import linear_scan, log_linear_scan
from . import diagnostics, models, training  # noqa: E402  (after the layers they build on)

__version__ = "0.1.0"

__all__ = [
    "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "MinGRU", "MinLSTM",
    "LayerNormLSTM", "LayerNormGRU", "LayerNormLSTMCell", "LayerNormGRUCell",
    "linear_scan", "log_linear_scan", "recurrence", "available_backends",
    "backends", "ops", "diagnostics", "models", "training",
]

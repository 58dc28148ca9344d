"""Drop-in torch.nn recurrent layers and cells on fusedrnn's recurrence op, and the
parallel-in-time MinGRU / MinLSTM layers on the linear scan."""

from .cells import GRUCell, LSTMCell, RNNCell
from .minrnn import MinGRU, MinLSTM
from .rnn import GRU, LSTM, RNN

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "MinGRU", "MinLSTM"]

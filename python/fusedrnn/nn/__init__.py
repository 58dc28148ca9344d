"""Drop-in torch.nn recurrent layers and cells on fusedrnn's recurrence op, and the
parallel-in-time MinGRU / MinLSTM layers on the linear scan."""

import torch

from .cells import GRUCell, LSTMCell, RNNCell
from .layernorm import LayerNormGRU, LayerNormGRUCell, LayerNormLSTM, LayerNormLSTMCell
from .minrnn import MinGRU, MinLSTM
from .rnn import GRU, LSTM, RNN

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "MinGRU", "MinLSTM",
           "LayerNormLSTM", "LayerNormGRU", "LayerNormLSTMCell", "LayerNormGRUCell"]

# A whole saved model that holds these layers loads with torch.load(weights_only=True) wherever
# one holding torch.nn's does, with nothing added to the user's code. Safe: the weights-only
# unpickler only creates the classes (``__new__``) and restores their ``__dict__`` through
# torch.nn's ``__setstate__`` (plus defaults for fusedrnn's two extra attributes); no method
# of these classes runs code named by the file, and ``backend`` is checked against a fixed list
# of fusedrnn's own modules when the layer runs. See docs/ecosystem.md.
torch.serialization.add_safe_globals([RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell, MinGRU, MinLSTM,
                                      LayerNormLSTM, LayerNormGRU, LayerNormLSTMCell,
                                      LayerNormGRUCell])

"""The recurrence op (one layer, one direction) and its backends."""

from .cells import GATES, MODES
from .reference import gru_ref, lstm_ref, recurrence_ref, rnn_relu_ref, rnn_tanh_ref

__all__ = ["GATES", "MODES", "recurrence_ref", "rnn_tanh_ref", "rnn_relu_ref", "lstm_ref", "gru_ref"]

"""The recurrence op (one layer, one direction) and its backends."""

from .cells import GATES, MODES
from .reference import recurrence_ref

__all__ = ["GATES", "MODES", "recurrence_ref"]

"""Ready-made models built on fusedrnn's drop-in layers."""

from .seq2seq import LuongAttention, Seq2Seq, Seq2SeqOutput

__all__ = ["Seq2Seq", "Seq2SeqOutput", "LuongAttention"]

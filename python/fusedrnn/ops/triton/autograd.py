"""Autograd for the fused Triton recurrence: the kernels' loop, then the weight GEMMs.

The backward kernel carries dh (and dc) through reversed time and writes the gate gradients;
``d_w_hh`` and ``d_b_hh`` are then one GEMM / one reduction over all T*B rows, and ``d_w_hr``
(projection) one more GEMM against the recomputed cell outputs.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..cells import GATES
from .launch import rnn_bwd, rnn_fwd


class FusedRecurrence(torch.autograd.Function):
    """(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, clip) -> (y, h_T, c_T)."""

    @staticmethod
    def forward(ctx, mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, clip=None):
        save = any(ctx.needs_input_grad)
        y, h_T, c_T, saved = rnn_fwd(mode, xw, w_hh, b_hh, h0, c0, lengths, reverse, w_hr, save)
        ctx.mode, ctx.reverse, ctx.plan, ctx.clip = mode, reverse, None, clip
        ctx.has = (b_hh is not None, c0 is not None)
        ctx.dtypes = (xw.dtype, h0.dtype)
        ctx.device = xw.device
        if saved is not None:
            ctx.plan = saved["plan"]
            ctx.save_for_backward(w_hh, w_hr, lengths, saved["act"], saved["hprev"], saved["cprev"])
        ctx.shape = (xw.shape, h0.shape)
        return y, h_T, c_T

    @staticmethod
    @once_differentiable  # the backward kernels are not themselves differentiable
    def backward(ctx, dy, dh_T, dc_T):
        mode = ctx.mode
        (T, B, GH), (_, P) = ctx.shape
        dtype = ctx.dtypes[0]
        if ctx.plan is None:  # T == 0 (nothing saved): the states pass straight through
            dxw = torch.zeros(ctx.shape[0], dtype=dtype, device=ctx.device)
            return (None, dxw, None, None, dh_T, dc_T if ctx.has[1] else None, None, None, None,
                    None)
        w_hh, w_hr, lengths, act, hprev, cprev = ctx.saved_tensors
        dev = w_hh.device
        H = GH // GATES[mode]
        if dy is None:
            dy = torch.zeros(T, B, P, device=dev)
        if dh_T is None:
            dh_T = torch.zeros(B, P, device=dev)
        if mode == "LSTM" and dc_T is None:
            dc_T = torch.zeros(B, H, device=dev)
        dxw, drec, dh0, dc0, dhtot = rnn_bwd(mode, {"act": act, "hprev": hprev, "cprev": cprev,
                                                    "plan": ctx.plan},
                                             w_hh, dy.contiguous(), dh_T, dc_T, lengths,
                                             ctx.reverse, w_hr, ctx.clip)
        drec2 = drec.reshape(T * B, GH)
        d_w_hh = drec2.t() @ hprev.reshape(T * B, P)  # [G*H, P], fp32
        d_b_hh = drec2.sum(0) if ctx.has[0] else None
        d_w_hr = None
        if w_hr is not None:
            i, f, g, o = act.chunk(4, dim=2)
            m = o * torch.tanh(f * cprev + i * g)  # [T, B, H] the projected cell output
            d_w_hr = (dhtot.reshape(T * B, P).t() @ m.reshape(T * B, H)).to(w_hr.dtype)
        hdt = ctx.dtypes[1]
        d_b_hh = None if d_b_hh is None else d_b_hh.to(dtype)
        d_c0 = dc0.to(hdt) if (dc0 is not None and ctx.has[1]) else None
        return (None, dxw.to(dtype), d_w_hh.to(w_hh.dtype), d_b_hh, dh0.to(hdt), d_c0, None, None,
                d_w_hr, None)

"""Shared preamble of the Triton test files: skip the importing module cleanly when the Triton
backend cannot run here, else export it and the device its tests run on (CUDA, or CPU tensors
under TRITON_INTERPRET=1, which tests/conftest.py sets when there is no GPU)."""

import pytest
import torch

tri = pytest.importorskip("fusedrnn.ops.triton")
if tri.unavailable() is not None:
    pytest.skip(tri.unavailable(), allow_module_level=True)

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if not tri.supports(DEV):
    pytest.skip("no CUDA and TRITON_INTERPRET is not set", allow_module_level=True)
MODES = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")
#: the op contract's tensor arguments, in order
NAMES = ("xw", "w_hh", "b_hh", "h0", "c0", "w_hr")

"""Smoke test of an installed fusedrnn wheel (run by .ci/run from outside the source tree).

Checks that the package imported is the installed one (not the source tree), that its compiled
extension loaded (the "cpu" backend), that a layer matches torch.nn forward and backward, and
that the console script is installed. Exits non-zero on any failure.
"""

import os
import shutil
import sys

import torch

import fusedrnn

prefix = os.path.realpath(sys.prefix)
where = os.path.realpath(fusedrnn.__file__)
assert where.startswith(prefix), f"imported fusedrnn from {where}, not from the venv {prefix}"
assert "cpu" in fusedrnn.available_backends(), f"no C++ backend: {fusedrnn.available_backends()}"

torch.manual_seed(0)
ours = fusedrnn.LSTM(5, 7, num_layers=2, bidirectional=True, backend="cpu").double()
ref = torch.nn.LSTM(5, 7, num_layers=2, bidirectional=True).double()
ref.load_state_dict(ours.state_dict())
x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
for m in (ours, ref):
    m(x)[0].square().sum().backward()
torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-9, atol=1e-11)
torch.testing.assert_close(ours.weight_hh_l1_reverse.grad, ref.weight_hh_l1_reverse.grad,
                           rtol=1e-9, atol=1e-11)
bench = shutil.which("fusedrnn-bench", path=os.path.join(sys.prefix, "bin"))
assert bench, "console script fusedrnn-bench not installed"
print(f"wheel smoke test ok: fusedrnn {fusedrnn.__version__} from {where}, "
      f"backends {fusedrnn.available_backends()}")

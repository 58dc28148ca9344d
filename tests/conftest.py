"""Test configuration shared by every test file.

Without a GPU, Triton kernels can only run in its interpreter, and ``@triton.jit`` picks the
interpreter at decoration time, so the switch is set here, before any test imports fusedrnn.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fusedrnn  # noqa: E402

# Hypothesis profiles for the property suites (test_properties*.py). "ci" (the default) keeps
# the whole suite within a few minutes on a 2-core machine; HYPOTHESIS_PROFILE=deep runs many
# more examples locally. Failing examples stay in the default database (.hypothesis/, git-ignored)
# and are replayed first next time; print_blob prints the shrunk case's reproduction line.
try:
    from hypothesis import HealthCheck, settings

    _common = dict(deadline=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile("ci", max_examples=200, **_common)
    settings.register_profile("deep", max_examples=1000, **_common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is a test extra; the property files importorskip it
    pass

#: tolerances per dtype, relative to a float64 reference (docs/architecture.md, convention 5)
TOL = {
    torch.float64: dict(rtol=1e-9, atol=1e-11),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
    torch.float16: dict(rtol=1e-3, atol=1e-3),
}

#: backends the drop-in layer suite runs on here: CPU-tensor backends except the Triton
#: interpreter, which is far too slow for the full grid (it has its own tests).
LAYER_BACKENDS = [b for b in ("reference", "cpu") if b in fusedrnn.available_backends()]


def pytest_addoption(parser):
    parser.addoption(
        "--backends", default=None,
        help="comma-separated backends for the drop-in layer suite (default: all available "
             f"CPU backends, now {LAYER_BACKENDS})",
    )


def _parametrized_names(metafunc):
    names = set()
    for mark in metafunc.definition.iter_markers("parametrize"):
        argnames = mark.args[0]
        names.update(a.strip() for a in argnames.split(",")) if isinstance(argnames, str) \
            else names.update(argnames)
    return names


def pytest_generate_tests(metafunc):
    # tests that parametrize `backend` themselves (e.g. the scan's) keep their own list
    if "backend" in metafunc.fixturenames and "backend" not in _parametrized_names(metafunc):
        opt = metafunc.config.getoption("--backends")
        names = opt.split(",") if opt else LAYER_BACKENDS
        metafunc.parametrize("backend", names)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def nan_poison(monkeypatch):
    """Make torch.empty / empty_like return NaN-filled tensors, so an element that Python-side
    code allocates and forgets to write shows up as NaN in the results."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def _fill(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: _fill(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _fill(real_empty_like(*a, **k)))
    yield

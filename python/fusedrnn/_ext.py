"""Loading the compiled extension ``fusedrnn._C``; the package imports without it."""

from __future__ import annotations

_C = None
_ERROR: str | None = None

try:
    from . import _C  # noqa: F811  registers the fusedrnn:: ops with torch.library
except ImportError as e:  # not built: the reference backend still works
    _ERROR = (
        f"the C++ extension fusedrnn._C is not built ({e}). Build it with "
        "`pip install --no-build-isolation -e .` from the repository root (needs a C++ compiler "
        "and ninja)"
    )


def extension_error() -> str | None:
    """None when the extension is loaded, else why not and how to build it."""
    return _ERROR

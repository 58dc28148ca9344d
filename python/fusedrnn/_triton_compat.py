"""Compatibility of the Triton kernels with every Triton release the project supports (3.6 on the
GPU image, 3.9 in CI). Nothing here changes what a kernel compiles to: only the CPU interpreter
(``TRITON_INTERPRET=1``) is touched.

**Loop bounds in the interpreter (Triton < 3.7 with NumPy >= 2.4).** The interpreter turns every
integer kernel argument into a one-element *1-D* NumPy array and implements ``tensor.__index__``
(what ``range(s0, s_end)`` calls) as ``int(handle.data)``. NumPy 2.4 made ``int()`` of an array
with ``ndim > 0`` a TypeError (deprecated since 1.25), so every loop with a runtime bound fails:
``InterpreterError: TypeError('only 0-dimensional arrays can be converted to Python scalars')``.
Triton fixed it upstream (triton-lang/triton#9171: ``int(handle.data.squeeze())``, in 3.9);
triton 3.6.0 still has the old line. ``patch_interpreter()`` re-installs that same fix after the
interpreter's own patching of ``tl.tensor``, through the interpreter's scope, so it is undone with
the rest when the kernel returns. Rewriting the kernels' loops instead (e.g. ``while``) would
change the compiled code (scf.while instead of scf.for, no software pipelining of the K-chunk
loop), which the AOT report pins.
"""

from __future__ import annotations

import os

#: set once patched (idempotent across imports)
_PATCHED = False


def _index(self) -> int:
    # one-element arrays of any rank (the interpreter's scalars are shape (1,)), as 3.9 does
    return int(self.handle.data.squeeze())


def patch_interpreter() -> bool:
    """Make the Triton interpreter's ``tensor.__index__`` NumPy-2.4-safe. Returns whether the patch
    is installed. A no-op without TRITON_INTERPRET=1 or when the interpreter's layout is unknown
    (a future Triton: its own ``__index__`` is then kept)."""
    global _PATCHED
    if _PATCHED:
        return True
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        return False
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    orig = getattr(interpreter, "_patch_lang_tensor", None)
    if orig is None:
        return False

    def _patch_lang_tensor(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", _index)

    # _patch_lang looks the helper up as a module global at every kernel call
    interpreter._patch_lang_tensor = _patch_lang_tensor
    _PATCHED = True
    return True

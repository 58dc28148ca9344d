"""The package must run on the GPU image's torch 2.11 while CI tests torch 2.13, so the torch APIs
it uses are pinned here: every ``torch.library`` function and every private ``torch._*`` name
referenced from python/, tools/ and tests/ must be in an audited list (docs/versions.md).
A new one fails this test until it has been checked against torch 2.11 (and guarded
with a fallback if it is newer).

The audit: the torch.library calls below are all documented in torch 2.4's ``torch.library``
page (custom_op, register_fake, register_autograd, register_kernel, opcheck, Library) and
unchanged in signature through 2.13; ``torch._dynamo.config.patch`` / ``reset`` /
``lookup_backend`` (tests only) exist since 2.0. Not used anywhere: ``triton_op`` /
``wrap_triton`` (2.6+), ``register_autocast`` (2.6+), ``register_vmap`` (2.5+),
``register_torch_dispatch`` (2.5+).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: torch.library names audited against torch 2.11 (all present since 2.4)
LIBRARY_OK = {"custom_op", "register_fake", "register_autograd", "register_kernel", "opcheck",
              "Library", "impl", "define"}
#: private torch names audited against torch 2.11 (tests only)
PRIVATE_OK = {"torch._dynamo.config.patch", "torch._dynamo.reset", "torch._dynamo.lookup_backend",
              "torch._dynamo.config.allow_rnn", "torch._C"}


def _torch_chains(path: Path) -> set[str]:
    """Dotted ``torch.…`` attribute chains in a file, aliases of ``import torch.x as y`` and
    ``from torch.x import y`` resolved."""
    tree = ast.parse(path.read_text(), str(path))
    alias, found = {"torch": "torch"}, set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names:
                if a.name.split(".")[0] == "torch":
                    alias[a.asname or "torch"] = a.name if a.asname else "torch"
        elif isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "torch":
            for a in n.names:
                alias[a.asname or a.name] = f"{n.module}.{a.name}"
                found.add(f"{n.module}.{a.name}")
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute):
            chain, x = [], n
            while isinstance(x, ast.Attribute):
                chain.append(x.attr)
                x = x.value
            if isinstance(x, ast.Name) and x.id in alias:
                found.add(".".join([alias[x.id], *reversed(chain)]))
    return found


def _all_chains() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for folder in ("python", "tools", "tests", "benchmarks", "examples"):
        for p in sorted((ROOT / folder).rglob("*.py")):
            for c in _torch_chains(p):
                out.setdefault(c, set()).add(str(p.relative_to(ROOT)))
    return out


def test_torch_library_calls_are_audited():
    chains = _all_chains()
    lib = {c.split(".")[2]: files for c, files in chains.items()
           if c.startswith("torch.library.") and len(c.split(".")) >= 3}
    new = {name: sorted(files) for name, files in lib.items() if name not in LIBRARY_OK}
    assert not new, f"torch.library functions not audited against torch 2.11: {new}"
    assert {"custom_op", "register_fake", "register_autograd"} <= set(lib)  # the scan sees them


def test_private_torch_names_are_audited():
    chains = _all_chains()
    private = {c: files for c, files in chains.items()
               if any(part.startswith("_") and not part.startswith("__") for part in c.split(".")[1:2])}
    new = {c: sorted(f) for c, f in private.items()
           if not any(c == ok or c.startswith(ok + ".") or ok.startswith(c + ".")  # prefixes
                      for ok in PRIVATE_OK)}
    assert not new, f"private torch names not audited against torch 2.11: {new}"
    assert any(c.startswith("torch._dynamo") for c in private)  # the scan sees them

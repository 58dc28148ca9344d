"""One description per cell: what adding a cell touches (docs/architecture.md, "How to add a cell").

- The shared code (csrc, python outside nn/, tools) tests which cell it runs on at most
  ``MAX_CELL_NAME_LINES`` lines: outside the cell description files, loops read traits.
- The doc's file list is short and names every file that lists the cells.
- The Python registry (``ops/cells.py`` ``CELLS``) and the C++ one (``cells.h``: the enum,
  ``FUSEDRNN_CELLS``, the traits; ``cell_dispatch.h``) name the same cells in the same order and
  agree on every trait (a small program compiled against the headers prints the C++ side).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fusedrnn.ops.cells import CELLS, MODES

ROOT = Path(__file__).resolve().parents[1]
CELLS_H = ROOT / "csrc" / "include" / "fusedrnn" / "cells.h"
#: the cell description files: the equations once per language (and the registry)
DESCRIPTION = {"csrc/include/fusedrnn/cells.h", "python/fusedrnn/ops/cells.py",
               "python/fusedrnn/ops/triton/cells.py"}
#: the issue's target for the whole shared tree
MAX_CELL_NAME_LINES = 20
MAX_DOC_FILES = 6
_SOURCES = (".py", ".cpp", ".h", ".cuh", ".cu")

_NAME = "(?:" + "|".join(MODES) + ")"
_LITERAL = re.compile(f'"{_NAME}"')
# a line that tests or tabulates a cell by name: a comparison with a mode string or a Cell
# enumerator, Triton's MODE against a number, membership in a literal tuple of modes, a switch
# case of one cell, a table keyed by mode, a kGru/kLstm-style flag
_CELL_TEST = re.compile(
    rf'(?:==|!=)\s*(?:Cell::\w+|"{_NAME}")|(?:Cell::\w+|"{_NAME}")\s*(?:==|!=)'
    rf'|\bMODE\s*(?:==|!=)\s*\d|\bin\s*[(\[{{]\s*"{_NAME}"|\bcase\s+Cell::(?!CELL\b)\w+'
    rf'|"{_NAME}"\s*:|\bk(?:Gru|Lstm|Rnn)\w*\b')


def is_cell_name_line(line: str) -> bool:
    """Whether a source line tests or tabulates cells by name (a hand list of the modes counts
    when it names an Elman mode: the layer names "LSTM", "GRU" alone are not modes)."""
    lits = set(_LITERAL.findall(line))
    return bool(_CELL_TEST.search(line)) or (len(lits) >= 2 and any("RNN_" in x for x in lits))


def shared_files():
    """Every source file outside the cell descriptions, nn/ (the layers map their own names to
    modes) and the tests."""
    for top in ("csrc", "python", "tools"):
        for p in sorted((ROOT / top).rglob("*")):
            rel = p.relative_to(ROOT).as_posix()
            if (p.suffix in _SOURCES and rel not in DESCRIPTION
                    and not rel.startswith("python/fusedrnn/nn/")):
                yield rel, p.read_text()


def test_cell_name_checker_can_fail():
    for line in ('if mode == "LSTM":', "x = 1 if mode != 'GRU' else 2".replace("'", '"'),
                 "const bool lstm = cell == Cell::LSTM;", "case Cell::GRU: return 3;",
                 "if MODE == 3:", 'SAVED = {"RNN_TANH": 1, "LSTM": 4}', "if (kGru) {",
                 'MODES = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")', 'if mode in ("LSTM", "GRU"):'):
        assert is_cell_name_line(line), line
    for line in ("if CELL_STATE[mode]:", "case Cell::CELL: \\", '__all__ = ["LSTM", "GRU"]',
                 "constexpr bool kHasC = Ops::kHasC;", 'raise ValueError("only LSTM")'):
        assert not is_cell_name_line(line), line


def test_shared_code_tests_cells_by_traits():
    hits = [f"{rel}:{i}: {line.strip()}" for rel, text in shared_files()
            for i, line in enumerate(text.splitlines(), 1) if is_cell_name_line(line)]
    assert len(hits) <= MAX_CELL_NAME_LINES, (
        f"{len(hits)} lines outside the cell descriptions test cells by name (at most "
        f"{MAX_CELL_NAME_LINES}); read a trait of fusedrnn.ops.cells.CELLS / cells.h "
        "instead:\n" + "\n".join(hits))


def _doc_files() -> list[str]:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.split("## How to add a cell", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\d+\. `([^`]+)`", section, flags=re.M)


def test_how_to_add_a_cell_lists_every_file_that_lists_the_cells():
    files = _doc_files()
    assert files, "docs/architecture.md has no numbered file list under 'How to add a cell'"
    assert len(files) <= MAX_DOC_FILES, files
    for f in files:
        assert (ROOT / f).is_file(), f"the doc names {f}, which does not exist"
    assert DESCRIPTION <= set(files), (DESCRIPTION, files)
    # a file naming every mode lists the cells: a new cell would have to be added there too
    listing = sorted(rel for rel, text in shared_files()
                     if all(re.search(rf"\b{m}\b", text) for m in MODES))
    assert not listing, (f"{listing} list every cell by name; derive the list from "
                         "fusedrnn.ops.cells.CELLS / FUSEDRNN_CELLS or add the file to the doc")


def test_cpp_cell_lists_follow_the_python_registry():
    src = CELLS_H.read_text()
    xmacro = re.search(r"#define FUSEDRNN_CELLS\(X\)(.*)", src).group(1)
    assert tuple(re.findall(r"X\((\w+)\)", xmacro)) == MODES
    enum = re.search(r"enum class Cell \{([^}]*)\}", src).group(1)
    assert tuple(re.findall(r"(\w+)\s*=", enum)) == MODES


_PROBE = r"""
#include <cstdio>
#include "fusedrnn/cell_dispatch.h"
using namespace fusedrnn;
template <Cell C>
int direct() {  // whether the cell's backward sends dh to dh_prev outside W_hh
  double saved[8] = {.5, .5, .5, .5, .5, .5, .5, .5}, dx[8], dhh_last = 0, dh_prev = 0, dc = 0;
  CellOps<C>::bwd(1.0, 0.0, saved, .3, .2, .1, .4, dx, &dhh_last, &dh_prev, &dc);
  return dh_prev != 0.0;
}
int main() {
  for (int i = 0; i < kNumCells; ++i) {
    Cell c;
    if (!cell_from_name(kCellNames[i], std::strlen(kCellNames[i]), &c) || int(c) != i) return 1;
    const int g = with_cell(c, [](auto t) { return CellOps<decltype(t)::value>::G; });
    const int d = with_cell(c, [](auto t) { return direct<decltype(t)::value>(); });
    std::printf("%s %d %d %d %d %d %d %d %d", kCellNames[i], num_gates(c), g, num_saved(c),
                int(has_cell_state(c)), int(recurrent_grad_differs(c)),
                int(supports_projection(c)), d, num_cell_params(c));
    for (int k = 0; k < num_cell_params(c); ++k) std::printf(" %d", cell_param_units(c, k));
    std::printf("\n");
  }
  Cell c;
  return cell_from_name("LSTMX", 5, &c) || cell_from_name("LST", 3, &c) ? 2 : 0;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_cpp_traits_match_the_python_registry(tmp_path):
    (tmp_path / "probe.cpp").write_text(_PROBE)
    exe = tmp_path / "probe"
    r = subprocess.run(["g++", "-std=c++17", "-O0", f"-I{ROOT / 'csrc' / 'include'}",
                        str(tmp_path / "probe.cpp"), "-o", str(exe)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, f"mode-name lookup failed (exit {r.returncode})"
    got = {}
    for line in r.stdout.splitlines():
        name, *vals = line.split()
        got[name] = tuple(int(v) for v in vals)
    want = {c.name: (c.gates, c.gates, c.saved, int(c.has_cell_state),
                     int(c.recurrent_grad_differs), int(c.projection), int(c.direct_h_grad),
                     len(c.cell_params), *(units for _, units in c.cell_params))
            for c in CELLS.values()}
    assert got == want

"""The benchmark sweep: fusedrnn's backends against torch.nn across sequence lengths.

Run it as ``fusedrnn-bench`` or ``python -m fusedrnn.bench`` (``--help`` lists the options,
``--quick`` is a sub-minute sweep). It prints a table (median time, time per step, tokens/s,
speedup vs torch.nn, peak memory, parity), and writes ``results.json``, ``results.csv``,
``results.md``, ``time_vs_T.png`` and ``time_per_step_vs_T.png`` into ``--out``, each naming
the machine it ran on. See docs/benchmarks.md for what is measured and how.

Example::

    >>> from fusedrnn.bench import main
    >>> main(["--quick", "--cells", "GRU", "--out", "/tmp/bench"])  # doctest: +SKIP
    0
"""

from .cli import main

__all__ = ["main"]

"""Peak CPU memory of a callable, from the allocation events the PyTorch profiler records.

tracemalloc and RSS do not see ATen's CPU allocator reliably (RSS never shrinks, tracemalloc
only sees Python), so the peak is the running sum of the profiler's [memory] events.
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile


def peak_bytes(fn) -> int:
    """Peak of (bytes allocated - bytes freed) by ATen on CPU while ``fn()`` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak

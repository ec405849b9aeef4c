"""``--profile`` for the benchmarks: where a timed call spends its time, by our own functions."""

from __future__ import annotations

import cProfile
import pstats
import sys


def profiled(fn, title: str, top: int = 15):
    """Run ``fn`` under cProfile and print stream_nudge's functions by cumulative time.

    cProfile slows Python-heavy code more than numpy calls, so read the shares, not the seconds,
    against the benchmark's own (unprofiled) timings.
    """
    profile = cProfile.Profile()
    profile.enable()
    try:
        return fn()
    finally:
        profile.disable()
        print(f"--- cProfile of {title}: stream_nudge functions by cumulative time (top {top})")
        stats = pstats.Stats(profile, stream=sys.stdout)
        stats.sort_stats("cumulative").print_stats("stream_nudge", top)

"""Timing helpers shared by `python -m nbconv`, the comparison runner and the asv suite."""
import time

import numpy as np


def median_seconds(fn, repeats=5, min_time=0.2):
    """Median wall time of `fn()` over `repeats` samples, each averaging enough calls to last
    about `min_time` / repeats seconds."""
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    calls = max(1, int(min_time / repeats / once))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls)
    return float(np.median(samples))

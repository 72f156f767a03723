"""Timing helpers shared by `python -m nbconv`, the comparison runner and the asv suite."""
import time

import numpy as np


def median_seconds(fn, repeats=5, min_time=0.2):
    """Median wall time of `fn()` over `repeats` samples, each averaging enough calls to last
    about `min_time` / repeats seconds."""
    return interleaved_medians({"fn": fn}, repeats, min_time)["fn"]


def interleaved_medians(runners, repeats=5, min_time=0.2):
    """`median_seconds` of every runner in a dict, sampled in turn: round r times each runner once,
    so that the slow spells of a shared machine (10-30% for seconds at a time here) fall on every
    runner alike instead of on whichever ran then. Each round takes the runners in a new random order,
    so that none always follows the same one (whose threads may still be spinning after its work)."""
    calls = {}
    for name, fn in runners.items():
        start = time.perf_counter()
        fn()
        calls[name] = max(1, int(min_time / repeats / max(time.perf_counter() - start, 1e-7)))
    samples = {name: [] for name in runners}
    order = np.random.default_rng(0)
    for _ in range(repeats):
        for name in order.permutation(list(runners)):
            fn = runners[name]
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / calls[name])
    return {name: float(np.median(times)) for name, times in samples.items()}

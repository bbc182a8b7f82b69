"""Timing shared by the benchmark scripts: warm up once, then the median of `repeat` runs."""

import statistics
import time


def timed(fn, repeat: int) -> float:
    fn()  # warm up: page faults, thread pools, caches
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)

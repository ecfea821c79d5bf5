"""Shared timing for the benchmark scripts: median step time after warm-up, and peak GPU memory."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def timed_steps(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> tuple[float, float]:
    """Run ``step`` warmup + repeats times; returns (median seconds of the timed ones, peak GiB or NaN)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(times), peak

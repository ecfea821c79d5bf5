#!/usr/bin/env python
"""Preprocessing throughput (tutorial step 2) on synthetic phantom cases, with --extract_mesh.

Prints a table per slicing configuration (--axes): workers, median seconds over --repeats runs,
cases/s, speed-up against the 1-worker run, projected time for the 596-case TotalSegmentator
training set, and MB written per case. A reference row, "I/O floor", writes the same number of
files and bytes per case (atomically, no compute) in the same process: the rate the disk allows
for that output alone. Each run writes into a fresh folder (no reuse of finished cases).

    python benchmarks/bench_preprocess.py [--cases 100] [--repeats 3] [--workers 1,2] [--axes 0,1,2 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from sam3d_med.data.phantom import write_phantom_dataset
from sam3d_med.data.preprocess import PreprocessOptions, run_preprocess
from sam3d_med.io.atomic import atomic_write_bytes

TRAINING_SET_CASES = 596


def folder_size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def io_floor_seconds(out: Path, n_files: int, n_bytes: int) -> float:
    """Seconds to write ``n_files`` files totalling ``n_bytes`` with the same atomic writes."""
    payload = os.urandom(max(1, n_bytes // n_files))
    start = time.perf_counter()
    for i in range(n_files):
        atomic_write_bytes(out / f"f{i:06d}.bin", payload)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--axes", nargs="+", default=["0,1,2", "2"], help="one slicing configuration each")
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]

    root = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    print(f"preprocess --extract_mesh on {args.cases} phantom cases (64^3, 3 mm), median of {args.repeats} runs; "
          f"{platform.machine()}, {os.cpu_count()} CPUs")
    try:
        raw = root / "raw"
        write_phantom_dataset(raw, args.cases, seed=0)
        for axes_text in args.axes:
            axes = tuple(int(a) for a in axes_text.split(","))
            options = PreprocessOptions(classes=5, spacing_mm=3.0, axes=axes, extract_mesh=True)
            rows = []
            for workers in worker_counts:
                times = []
                for r in range(args.repeats):
                    out = root / f"out_{r}"
                    start = time.perf_counter()
                    summary = run_preprocess(raw, out, options, workers=workers, progress=False, log=lambda m: None)
                    times.append(time.perf_counter() - start)
                    assert summary.ok and len(summary.processed) == args.cases
                    n_files, n_bytes = folder_size(out)
                    shutil.rmtree(out)
                rows.append((f"{workers} worker" + ("s" if workers > 1 else ""), statistics.median(times)))
            floor = []
            for r in range(args.repeats):
                out = root / f"floor_{r}"
                out.mkdir()
                floor.append(io_floor_seconds(out, n_files, n_bytes))
                shutil.rmtree(out)
            rows.append(("I/O floor", statistics.median(floor)))
            reference = rows[0][1]
            print(f"\naxes {axes_text}: {n_files / args.cases:.0f} files, {n_bytes / args.cases / 1e6:.1f} MB per case")
            print(f"{'run':>10} {'median s':>9} {'cases/s':>8} {'vs 1w':>6} {'596 cases s':>11}")
            for name, seconds in rows:
                rate = args.cases / seconds
                print(f"{name:>10} {seconds:>9.2f} {rate:>8.2f} {reference / seconds:>6.2f} {TRAINING_SET_CASES / rate:>11.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

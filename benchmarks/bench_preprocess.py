#!/usr/bin/env python
"""Preprocessing throughput (tutorial step 2) on synthetic phantom cases, with --extract_mesh.

Prints a table per slicing configuration (--axes): workers, median seconds over --repeats runs,
cases/s, speed-up against the 1-worker run, projected time for the 596-case TotalSegmentator
training set, MB written per case and the CPU time (user + system, all processes) per case. A
reference row, "I/O floor", writes the same number of files and bytes per case (atomically, no
compute) in the same process: the rate the disk allows for that output alone.

Each run writes into a fresh folder, and every output stays until the benchmark ends (disk: about
--cases x 12 MB per run). Why: on a file system without a journal (this VM's ext4), the kernel
skips the inodes deleted in the last 1-5 minutes when it allocates new ones (``recently_deleted``
in ext4's inode allocator), a scan that made file creation 2-3x slower in the run that followed a
deletion of the previous run's 13,000 files. ``--delete_between_runs`` measures that case (e.g. a
re-run with --overwrite right after another one).

    python benchmarks/bench_preprocess.py [--cases 100] [--repeats 3] [--workers 1,2] [--axes 0,1,2 2]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import resource
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


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (the worker pool)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--axes", nargs="+", default=["0,1,2", "2"], help="one slicing configuration each")
    parser.add_argument("--delete_between_runs", action="store_true",
                        help="delete each run's output before the next run (see the module doc)")
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]

    root = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    print(f"preprocess --extract_mesh on {args.cases} phantom cases (64^3, 3 mm), median of {args.repeats} runs; "
          f"{platform.machine()}, {os.cpu_count()} CPUs; outputs "
          + ("deleted between runs" if args.delete_between_runs else "kept until the end"))
    run_numbers = itertools.count(1)

    def fresh_folder() -> Path:
        folder = root / f"run_{next(run_numbers):03d}"
        folder.mkdir()
        return folder

    def done_with(folder: Path) -> None:
        if args.delete_between_runs:
            shutil.rmtree(folder)

    try:
        raw = root / "raw"
        write_phantom_dataset(raw, args.cases, seed=0)
        for axes_text in args.axes:
            axes = tuple(int(a) for a in axes_text.split(","))
            options = PreprocessOptions(classes=5, spacing_mm=3.0, axes=axes, extract_mesh=True)
            rows = []
            for workers in worker_counts:
                times, cpu = [], []
                for _ in range(args.repeats):
                    out = fresh_folder() / "cache"
                    start, cpu_start = time.perf_counter(), cpu_seconds()
                    summary = run_preprocess(raw, out, options, workers=workers, progress=False, log=lambda m: None)
                    times.append(time.perf_counter() - start)
                    cpu.append(cpu_seconds() - cpu_start)
                    assert summary.ok and len(summary.processed) == args.cases
                    n_files, n_bytes = folder_size(out)
                    done_with(out.parent)
                rows.append((f"{workers} worker" + ("s" if workers > 1 else ""), statistics.median(times),
                             statistics.median(cpu)))
            floor, floor_cpu = [], []
            for _ in range(args.repeats):
                out = fresh_folder()
                cpu_start = cpu_seconds()
                floor.append(io_floor_seconds(out, n_files, n_bytes))
                floor_cpu.append(cpu_seconds() - cpu_start)
                done_with(out)
            rows.append(("I/O floor", statistics.median(floor), statistics.median(floor_cpu)))
            reference = rows[0][1]
            print(f"\naxes {axes_text}: {n_files / args.cases:.0f} files, {n_bytes / args.cases / 1e6:.1f} MB per case")
            print(f"{'run':>10} {'median s':>9} {'cases/s':>8} {'vs 1w':>6} {'596 cases s':>11} {'CPU ms/case':>11}")
            for name, seconds, cpu_s in rows:
                rate = args.cases / seconds
                print(f"{name:>10} {seconds:>9.2f} {rate:>8.2f} {reference / seconds:>6.2f} "
                      f"{TRAINING_SET_CASES / rate:>11.1f} {1000 * cpu_s / args.cases:>11.0f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

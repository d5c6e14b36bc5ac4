"""Timing and memory helpers shared by the benchmarks (wall time, best of several runs)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import torch


def best_time(fn, device: str, min_repeats: int = 3, max_repeats: int = 10, budget: float = 3.0) -> float:
    """Smallest wall time of ``fn()`` in seconds, after one warm-up run.

    Runs at least ``min_repeats`` times and stops after ``max_repeats`` runs or once ``budget``
    seconds have been spent. The minimum is the figure least disturbed by other processes on a
    shared machine.
    """
    fn()
    times, spent = [], 0.0
    while len(times) < min_repeats or (len(times) < max_repeats and spent < budget):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return min(times)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    """Resident memory of this process now, MB."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def machine(device: str) -> str:
    """The device and machine that the numbers come from."""
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    threads = f"{torch.get_num_threads()} torch threads"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {threads}, torch {torch.__version__}"


def sized_main(doc: str, option: str, kind, sizes: list, measure, table) -> None:
    """The command line of a benchmark measured at several sizes: ``--<option>`` gives the sizes
    (default ``sizes``), each is measured by ``measure(size)`` (a dict), and the rows are printed as
    JSON lines with ``--json`` (what ``run_all.py`` reads), else as ``table(rows)``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(f"--{option}", type=kind, nargs="+", default=sizes)
    parser.add_argument("--json", action="store_true", help="one JSON line per measurement")
    args = parser.parse_args()
    rows = []
    for size in getattr(args, option):
        rows.append(measure(size))
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        print(table(rows))

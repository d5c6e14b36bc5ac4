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


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0))


def _machine_rate(work: float, make, device: str) -> float:
    """The highest rate ``work / seconds`` of the operation that ``make()`` returns, best of several
    runs. On the CPU the larger of the rate on all cores and the rate of one core times the number
    of cores: each core works at most as fast as it does alone (clocks fall and memory is shared as
    more cores work), and one thread is the measurement least disturbed by other processes, which
    make threads wait for a descheduled partner. Both keep the rate an upper bound."""
    if device == "cuda":
        return work / best_time(make(), device, min_repeats=10, max_repeats=100, budget=2.0)
    threads = torch.get_num_threads()
    rates = []
    try:
        for count, scale in ((cores(), 1), (1, cores())):
            torch.set_num_threads(count)
            rates.append(scale * work / best_time(make(), device, min_repeats=10, max_repeats=100, budget=2.0))
    finally:
        torch.set_num_threads(threads)
    return max(rates)


def multiply_add_rate(device: str, side: int | None = None) -> float:
    """Peak float32 multiply-adds per second of ``device``: a square matrix product (side**3
    multiply-adds; TF32 off on CUDA), the operation that BLAS libraries bring closest to the
    hardware's peak. On the CPU a side of 512 (a few ms a run): its operands stay in cache, and
    short runs are the likeliest to find a core to themselves on a shared machine."""
    side = side or (8192 if device == "cuda" else 512)

    def make():
        a, b = torch.rand(side, side, device=device), torch.rand(side, side, device=device)
        out = torch.empty(side, side, device=device)
        return lambda: torch.mm(a, b, out=out)

    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return _machine_rate(float(side) ** 3, make, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


def copy_bandwidth(device: str, nbytes: int) -> float:
    """Memory bandwidth in bytes per second of ``device``: the best rate of copying ``nbytes``
    (read) into another buffer (written), counted as 2 * nbytes moved, and of copying 256 MB,
    whichever is higher (a small buffer stays in cache, whose bandwidth is higher; a large copy
    is the least disturbed by start-up costs)."""
    rates = []
    for size in (max(int(nbytes), 4), 1 << 28):

        def make(size=size):
            source = torch.rand(size // 4, device=device)
            target = torch.empty_like(source)
            return lambda: target.copy_(source)

        rates.append(_machine_rate(2.0 * (size // 4) * 4, make, device))
    return max(rates)


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

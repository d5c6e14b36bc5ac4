"""Running many independent jobs: one after another in this process, or as Ray tasks.

A :class:`Job` is a picklable function with its arguments (a runner of
:mod:`atomsplat.benchmark.methods` on a case, a training on a dataset). :func:`run_jobs` runs a
list of them on an engine (:class:`EngineOptions`):

- ``serial``: one after another in this process; Ray is not imported.
- ``ray``: every job a Ray task with its resources: ``cpus_per_job`` CPUs, and where the cluster
  has GPUs ``gpus_per_job`` GPUs for the jobs that use one (:attr:`Job.uses_gpu`). Without an
  address Ray is started on this machine (``ray.init()``: ``workers`` jobs at once, or as many as
  its cores hold) and stopped at the end; with ``address`` the jobs go to that running cluster
  (whose nodes must have atomsplat installed and see the same paths: data and work directories on
  a shared file system).

Both engines give each job ``cpus_per_job`` threads (torch and numba; None in the serial engine:
the process's own), so that the same job computes the same numbers in either engine. As each job
finishes, ``done(job, value)`` is called in this process (it keeps the result); a job that fails
is reported as a :class:`Failure` and the others go on. Progress is one line per finished job.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Literal, Optional

Log = Callable[[str], None]
ENGINES = ("ray", "serial")


class EngineError(ValueError):
    """Engine options that cannot be used (the message names the option and the problem)."""


@dataclass(frozen=True)
class Job:
    """One independent piece of work.

    Attributes:
        key: unique among the jobs of a run; names the job in progress lines and failures.
        function: a picklable callable (module-level function or frozen dataclass instance).
        args: its positional arguments (picklable; Ray ships each distinct object once).
        uses_gpu: the job computes on a GPU where one is given to it (a Ray task then asks for
            ``gpus_per_job`` GPUs when the cluster has any).
        log: a file that takes the job's standard output and error when it runs as a Ray task
            (None: Ray forwards them to this console); the serial engine prints to the console.
    """

    key: str
    function: Callable
    args: tuple = ()
    uses_gpu: bool = False
    log: Optional[Path] = None


@dataclass(frozen=True)
class Failure:
    """A job that raised.

    Attributes:
        key: the job's key.
        error: the exception in one line ("Type: message").
        details: the whole traceback.
        log: the job's log file, if it had one.
    """

    key: str
    error: str
    details: str
    log: Optional[Path] = None

    def summary(self) -> str:
        """One line: the job, its error and where its log is."""
        return f"{self.key}: {self.error}" + (f" (log: {self.log})" if self.log else "")


@dataclass(frozen=True)
class EngineOptions:
    """How :func:`run_jobs` runs the jobs (the module docstring).

    Attributes:
        engine: "ray" or "serial".
        address: a running Ray cluster ("auto", "ray://host:10001", "host:6379"); None: start Ray
            on this machine.
        workers: local Ray: jobs at once (Ray is started with ``workers x cpus_per_job`` CPUs);
            None: as many as the machine's cores hold. Not with ``address``.
        cpus_per_job: CPUs (threads) of each job; None: 1 under Ray (with ``workers`` given
            locally: the cores shared among them), the process's threads in the serial engine.
        gpus_per_job: GPUs of each job that uses one; None: 1 where the cluster has GPUs, else 0.
    """

    engine: Literal["ray", "serial"] = "serial"
    address: Optional[str] = None
    workers: Optional[int] = None
    cpus_per_job: Optional[int] = None
    gpus_per_job: Optional[float] = None

    def check(self) -> None:
        """Raise :class:`EngineError` for options that do not fit together."""
        if self.engine not in ENGINES:
            raise EngineError(f"--engine: {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.workers is not None and self.workers < 1:
            raise EngineError(f"--workers must be at least 1, got {self.workers}")
        if self.cpus_per_job is not None and self.cpus_per_job < 1:
            raise EngineError(f"--cpus-per-job must be at least 1, got {self.cpus_per_job}")
        if self.gpus_per_job is not None and self.gpus_per_job < 0:
            raise EngineError(f"--gpus-per-job must not be negative, got {self.gpus_per_job}")
        if self.engine == "serial" and (self.address or self.workers or self.gpus_per_job):
            raise EngineError("--ray-address, --workers and --gpus-per-job need --engine ray")
        if self.address and self.workers:
            raise EngineError("--workers sizes a Ray started on this machine; a cluster (--ray-address) has its own")

    def describe(self) -> str:
        """The engine in words, for the progress log."""
        if self.engine == "serial":
            threads = f"{self.cpus_per_job} threads" if self.cpus_per_job else "the process's threads"
            return f"one job after another in this process ({threads} each)"
        where = f"the Ray cluster at {self.address}" if self.address else "Ray on this machine"
        return f"{where}, {_local_cpus(self) or 1} CPU(s) per job, {self.workers or 'as many as fit'} at once"


def run_jobs(
    jobs: List[Job], options: EngineOptions, done: Callable[[Job, Any], None], log: Log = print
) -> List[Failure]:
    """Run ``jobs`` on the engine of ``options``; ``done(job, value)`` in this process as each
    finishes (an exception raised by ``done`` stops the run: it is the caller's). Returns the
    failures, in the order the jobs were given; the other jobs ran to their end."""
    options.check()
    if len({job.key for job in jobs}) != len(jobs):
        raise ValueError("job keys must be unique")
    if not jobs:
        return []
    progress = _Progress(len(jobs), log)
    log(f"{len(jobs)} jobs: {options.describe()}")
    if options.engine == "serial":
        failures = []
        for job in jobs:
            start = time.perf_counter()
            try:
                value = _call(job.function, job.args, options.cpus_per_job, None)
            except Exception as err:  # one job's failure must not lose the others
                failures.append(Failure(job.key, _one_line(err), traceback.format_exc()))
                progress.failed(failures[-1])
                continue
            progress.finished(job, time.perf_counter() - start)
            done(job, value)
        return failures
    return _run_on_ray(jobs, options, done, progress)


# ----------------------------------------------------------------------------- inside a job
@contextlib.contextmanager
def job_threads(count: Optional[int]) -> Iterator[None]:
    """Run the block with ``count`` threads in torch and numba (None: leave them as they are)."""
    if count is None:
        yield
        return
    import numba
    import torch

    before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(count)
    numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])


@contextlib.contextmanager
def _output_to(path: Optional[Path]) -> Iterator[None]:
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as stream, contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        yield


def _call(function: Callable, args: tuple, threads: Optional[int], log: Optional[Path]):
    """What a job runs: ``function(*args)`` with ``threads`` threads, output to ``log``."""
    with job_threads(threads), _output_to(log):
        return function(*args)


def _one_line(err: BaseException) -> str:
    message = " ".join(str(err).split())
    return f"{type(err).__name__}: {message[:300]}" if message else type(err).__name__


# ----------------------------------------------------------------------------- progress
class _Progress:
    def __init__(self, total: int, log: Log):
        self.total, self.count, self.failures, self.log = total, 0, 0, log
        self.start = time.perf_counter()

    def _prefix(self) -> str:
        self.count += 1
        failed = f", {self.failures} failed" if self.failures else ""
        return f"[{self.count}/{self.total}{failed}, {(time.perf_counter() - self.start) / 60:.1f} min]"

    def finished(self, job: Job, seconds: float) -> None:
        self.log(f"{self._prefix()} {job.key} finished in {seconds:.0f} s")

    def failed(self, failure: Failure) -> None:
        self.failures += 1
        where = f" (log: {failure.log})" if failure.log else ""
        self.log(f"{self._prefix()} {failure.key} FAILED: {failure.error}{where}")


# ----------------------------------------------------------------------------- Ray
def _ray():
    try:
        import ray
    except ImportError:
        raise EngineError(
            "--engine ray: Ray is not installed (pip install 'ray>=2.9', a dependency of atomsplat); --engine serial "
            "runs without it"
        ) from None
    return ray


def _timed(function: Callable, threads: Optional[int], log: Optional[Path], *args):
    """A Ray task: the job's value and its wall time in the worker (``args`` given one by one, so
    that Ray resolves those shipped to its object store)."""
    start = time.perf_counter()
    value = _call(function, args, threads, log)
    return value, time.perf_counter() - start


@contextlib.contextmanager
def session(options: EngineOptions) -> Iterator[None]:
    """Keep one Ray running for several :func:`run_jobs` calls (a time series' frames, one after
    another): started here when ``options`` asks for Ray and none runs, stopped at the end; with
    the serial engine, nothing."""
    if options.engine != "ray":
        yield
        return
    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        _start_ray(ray, options)
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


def _local_cpus(options: EngineOptions) -> Optional[int]:
    """CPUs per job on a Ray started here with ``workers`` given: the cores shared among them."""
    if options.cpus_per_job is None and options.workers and not options.address:
        return max(1, (os.cpu_count() or 1) // options.workers)
    return options.cpus_per_job


def _start_ray(ray, options: EngineOptions) -> None:
    if options.address:
        ray.init(address=options.address)
        return
    cpus = _local_cpus(options) or 1
    for attempt in (1, 2):
        try:
            ray.init(num_cpus=options.workers * cpus if options.workers else None, include_dashboard=False)
            return
        except Exception as err:  # Ray gives its processes 30 s to come up, too little on a loaded machine
            if attempt == 2 or "timed out during startup" not in str(err):
                raise
            ray.shutdown()


def _run_on_ray(jobs: List[Job], options: EngineOptions, done, progress: _Progress) -> List[Failure]:
    ray = _ray()
    cpus = _local_cpus(options) or 1
    with session(options):
        resources = ray.cluster_resources()
        gpus = options.gpus_per_job
        if gpus is None:
            gpus = 1 if resources.get("GPU", 0) > 0 else 0
        progress.log(
            f"Ray: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; each job {cpus} CPU(s)"
            + (f", {gpus:g} GPU(s) for those that use one" if gpus else "")
        )
        task = ray.remote(_timed)
        shipped = {}  # id(object) -> (ObjectRef, object): every distinct argument goes to the object store once

        def ship(value):
            if id(value) not in shipped:
                shipped[id(value)] = (ray.put(value), value)  # the object kept alive, so that its id stays its own
            return shipped[id(value)][0]

        pending = {}
        for job in jobs:
            resources_of = {"num_cpus": cpus, "num_gpus": gpus if job.uses_gpu else 0, "max_retries": 0}
            ref = task.options(**resources_of).remote(ship(job.function), cpus, job.log, *map(ship, job.args))
            pending[ref] = job
        failures = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                value, seconds = ray.get(ready[0])
            except Exception as err:  # a task's error, a crashed worker: reported, the others go on
                cause = getattr(err, "cause", None) or err
                failures[job.key] = Failure(job.key, _one_line(cause), str(err), job.log)
                progress.failed(failures[job.key])
                continue
            progress.finished(job, seconds)
            done(job, value)
        return [failures[job.key] for job in jobs if job.key in failures]

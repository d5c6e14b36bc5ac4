"""Test settings shared by every test.

Training amplifies rounding: the same run with 1 or 2 threads, or with another projector backend,
ends in slightly different atoms. The tests therefore fix the thread count and the projector
backend (here, before torch and numba are imported; subprocesses inherit the environment), so
that a machine repeats its own results: two threads by default (the 2-core machines the bounds
were measured on), one with ATOMSPLAT_TEST_THREADS=1. Machines of other CPUs still differ (the
vector instructions torch and numba dispatch to round differently: tests/test_comparison.py's
quick test measured it), so the accuracy bounds of the end-to-end tests are set outside the
spread measured over thread counts, backends and seeds (each test's docstring; the quick
comparison's also over AVX-512 and AVX2 kernels and CI's machine).
"""

import os

THREADS = os.environ.get("ATOMSPLAT_TEST_THREADS", "2")
os.environ["OMP_NUM_THREADS"] = THREADS
os.environ["NUMBA_NUM_THREADS"] = THREADS
os.environ["MKL_NUM_THREADS"] = THREADS
os.environ["ATOMSPLAT_PROJECTOR"] = "auto"  # numba on the CPU: what users get
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no busy waiting on a machine shared with other jobs

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(THREADS))


@pytest.fixture(scope="session", autouse=True)
def atomsplat_cache(tmp_path_factory):
    """Keep the preview images the DataParser writes out of the user's cache."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("cache")
    mp.setenv("ATOMSPLAT_CACHE", str(path))
    yield path
    mp.undo()

"""Test settings shared by every test.

Training amplifies rounding: the same run with 1 or 2 threads, or with another projector backend,
ends in slightly different atoms. The tests therefore fix the thread count and the projector
backend (here, before torch and numba are imported; subprocesses inherit the environment), so
that every machine computes what CI computes; the accuracy bounds of the end-to-end tests are
nevertheless set outside the spread measured over thread counts, backends and seeds (see each
test's docstring), so that they hold on any machine.
"""

import os

THREADS = "2"
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

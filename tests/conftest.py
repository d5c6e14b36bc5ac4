import pytest


@pytest.fixture(scope="session", autouse=True)
def atomsplat_cache(tmp_path_factory):
    """Keep the preview images the DataParser writes out of the user's cache."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("cache")
    mp.setenv("ATOMSPLAT_CACHE", str(path))
    yield path
    mp.undo()

import os
import sys

import jax
import pytest

sys.path.insert(0, os.path.dirname(__file__))


def pytest_collection_modifyitems(config, items):
    if jax.default_backend() == "gpu":
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (run on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module: one process runs the whole
    suite, and XLA:CPU's executables (each with its own code mappings) otherwise pile up
    until the process crashes inside a later compile (seen as segfaults at 74-84% of the
    suite in different tests)."""
    yield
    jax.clear_caches()

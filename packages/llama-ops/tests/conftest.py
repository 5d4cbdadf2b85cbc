import os

import numpy as np
import pytest

# Fused-kernel tests run unless the fallback was asked for; a missing library is a failure
# (test_backend.py), not a reason to skip.
FALLBACK_REQUESTED = os.environ.get("LLAMA_OPS_DISABLE", "") not in ("", "0")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config, items):
    """GPU tests (marked gpu) run only when asked for by marker: ``pytest -m gpu`` or
    ``nox -s tests_gpu``; a plain run deselects them (they fail, by design, without a GPU)."""
    if "gpu" in (config.option.markexpr or ""):
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]

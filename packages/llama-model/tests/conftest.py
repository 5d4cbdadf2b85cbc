import os

# Paddle's import pins OMP_NUM_THREADS=1; keep tests deterministic and light on a shared box.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    """GPU tests (marked gpu) run only when asked for by marker: ``pytest -m gpu`` or
    ``nox -s tests_gpu``; a plain run deselects them (they fail, by design, without a GPU)."""
    if "gpu" in (config.option.markexpr or ""):
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]

import os

import numpy as np
import pytest

# Fused-kernel tests run unless the fallback was asked for; a missing library is a failure
# (test_backend.py), not a reason to skip.
FALLBACK_REQUESTED = os.environ.get("LLAMA_OPS_DISABLE", "") not in ("", "0")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

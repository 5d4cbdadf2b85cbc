"""Process-wide Paddle settings that have no public API: the threads of the CPU math kernels, and
the logger of Paddle's distributed modules. Verified for Paddle 3.3."""

from __future__ import annotations

import logging

VERIFIED_FOR = ("3.3",)

# The logger of paddle/distributed/fleet/utils/log_util.py, named after its module; the distributed
# checkpoint writer (dist.save_state_dict) logs an INFO line per save through it.
_DISTRIBUTED_LOGGER = "paddle.distributed.fleet.utils.log_util"


def set_math_threads(threads: int) -> None:
    """The threads of Paddle's CPU math kernels in this process (the eager operators; Paddle's
    inference engine takes its own, ``Config.set_cpu_math_library_num_threads``)."""
    from paddle.base import core

    core.set_num_threads(int(threads))


def distributed_logger() -> logging.Logger:
    """The logger of Paddle's distributed modules (its checkpoint writer among them)."""
    return logging.getLogger(_DISTRIBUTED_LOGGER)

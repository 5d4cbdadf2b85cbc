"""Paddle's launcher (``paddle.distributed.launch``), as llama-train runs it: its handling of a
repeated stop signal, and a hook on each rank's start. Verified for Paddle 3.3."""

from __future__ import annotations

VERIFIED_FOR = ("3.3",)


def keep_the_first_stop() -> None:
    """A repeated stop signal keeps the first one's graceful stop: Paddle's launcher would cut its
    30 s window for the ranks' save to 10 s on a second signal (a scheduler signalling every
    process, then llama-train forwarding it)."""
    from paddle.distributed.launch.controllers.controller import ControllerBase

    first = ControllerBase.signal_handler

    def signal_handler(self, sigint, frame):
        if hasattr(self, "sigint"):  # already stopping: let the ranks finish their save
            return
        first(self, sigint, frame)

    ControllerBase.signal_handler = signal_handler


def on_rank_start(callback) -> None:
    """Call ``callback(pid, rank)`` as soon as the launcher has started each rank's process."""
    from paddle.distributed.launch.utils.process_context import ProcessContext

    start = ProcessContext._start

    def _start(self):
        start(self)
        rank = self._env.get("PADDLE_TRAINER_ID")
        if rank is not None and self._proc is not None:
            callback(self._proc.pid, int(rank))

    ProcessContext._start = _start

"""Paddle's launcher (``paddle.distributed.launch``), as llama-train runs it: in this process, with
its handling of a repeated stop signal and a hook on each rank's start. Its public surface is the
command line (``python -m paddle.distributed.launch``). Verified for Paddle 3.3."""

from __future__ import annotations

import sys

VERIFIED_FOR = ("3.3",)


def run(args: list[str]) -> None:
    """``python -m paddle.distributed.launch ARGS``, in this process (so that the hooks below,
    installed first, apply)."""
    from paddle.distributed.launch.main import launch

    sys.argv = ["paddle.distributed.launch", *args]
    launch()


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


def stop_window(seconds) -> None:
    """On a stop, the launcher waits ``max(30, seconds())`` for its ranks to save and exit before it
    kills them, where Paddle's waits a fixed 30 s: a large model's save takes longer."""
    from paddle.distributed.launch.controllers.controller import ControllerBase

    def stop(self, sigint=None):  # ControllerBase.stop with the window measured, not fixed
        self.ctx.logger.debug("Controller stop")
        self.watcher.stop()
        self.master.stop()
        self.pod.stop(timeout=max(30.0, float(seconds())))

    ControllerBase.stop = stop


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

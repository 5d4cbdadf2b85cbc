"""SIGTERM / SIGINT / SIGHUP: finish the current step, save a checkpoint, exit cleanly.

A signal only sets a flag (SIGHUP too: a dropped ssh session stops the job like SIGTERM). Ranks
may receive it during different steps, so after every step the ranks agree (an all-reduce of the
flag, MAX): either all of them save and stop after the same step, or none does. A second SIGINT in
a one-process run stops at once (KeyboardInterrupt).

Paddle's launcher answers its own SIGTERM/SIGINT by sending SIGTERM to every worker and killing
them once the orphan grace has passed (``supervise.orphan_grace``: from the measured step and save
times, never under Paddle's 30 s): the save must fit in that window, and a scheduler's own grace
period must be longer still.
"""

from __future__ import annotations

import signal


class StopRequest:
    def __init__(self, distributed: bool):
        self.distributed = distributed
        self.signum: int | None = None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT and not self.distributed:
            raise KeyboardInterrupt
        self.signum = signum

    def agreed(self) -> bool:
        """True on every rank when any rank has received a stop signal."""
        local = 1 if self.signum is not None else 0
        if not self.distributed:
            return bool(local)
        import paddle
        import paddle.distributed as dist

        flag = paddle.to_tensor([local], dtype="int32")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(int(flag.numpy()[0]))

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

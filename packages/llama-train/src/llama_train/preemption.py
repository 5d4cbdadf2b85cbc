"""Stopping cleanly: on a signal, and at a wall-clock limit. Either way the ranks finish the current
step, save a checkpoint and exit with status 0.

SIGTERM, SIGINT, SIGHUP (a dropped ssh session) and SIGUSR1 (what Slurm sends ahead of a job's
time limit with ``#SBATCH --signal=USR1@300``) only set a flag. ``--max-duration`` sets a
deadline (``RunRecord.deadline``): a rank wants to stop at the first step boundary after which
one more step, a save and the exit would no longer fit before it. Ranks may see either during
different steps, so after every step they agree (an all-reduce of the reason, MAX): either all of
them save and stop after the same step, or none does. A second SIGINT in a one-process run stops
at once (KeyboardInterrupt).

Paddle's launcher answers its own SIGTERM/SIGINT by sending SIGTERM to every worker and killing
them once the orphan grace has passed (``supervise.orphan_grace``: from the measured step and save
times, never under Paddle's 30 s): the save must fit in that window, and a scheduler's own grace
period must be longer still.
"""

from __future__ import annotations

import signal
import time

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
# Why the ranks stop, in increasing precedence (the agreement takes the largest).
SIGNALLED = 1
AT_DEADLINE = 2
# The time kept free after the save for the processes to exit (Paddle's teardown, the launcher's
# own exit), and the save time assumed before any save was measured: that share of the limit, at
# most a minute.
EXIT_MARGIN_S = 10.0
FIRST_SAVE_SHARE = 0.1
FIRST_SAVE_CAP_S = 60.0


class StopRequest:
    def __init__(self, distributed: bool, deadline: float | None = None, limit_s: float = 0.0):
        self.distributed = distributed
        self.deadline = deadline
        self.limit_s = limit_s  # the --max-duration the deadline came from
        self.signum: int | None = None
        self.reason = 0
        self._previous = {}
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT and not self.distributed:
            raise KeyboardInterrupt
        self.signum = signum

    def save_estimate(self, measured_save_s: float | None) -> float:
        """The time a save is taken to need: the last one measured, else a share of the limit."""
        if measured_save_s is not None:
            return measured_save_s
        return min(FIRST_SAVE_CAP_S, FIRST_SAVE_SHARE * self.limit_s)

    def past_deadline(self, step_s: float, measured_save_s: float | None) -> bool:
        """Whether another step of ``step_s`` seconds, then a save and the exit, would end after
        the deadline."""
        if self.deadline is None:
            return False
        needed = step_s + self.save_estimate(measured_save_s) + EXIT_MARGIN_S
        return time.time() + needed > self.deadline

    def agreed(self, step_s: float = 0.0, measured_save_s: float | None = None) -> int:
        """Why every rank stops now (0: it does not): SIGNALLED when any rank has received a stop
        signal, AT_DEADLINE when any rank finds the deadline too close for another step."""
        local = AT_DEADLINE if self.past_deadline(step_s, measured_save_s) else 0
        if not local and self.signum is not None:
            local = SIGNALLED
        if self.distributed:
            import paddle
            import paddle.distributed as dist

            flag = paddle.to_tensor([local], dtype="int32")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            local = int(flag.numpy()[0])
        self.reason = local
        return local

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

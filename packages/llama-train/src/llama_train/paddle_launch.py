"""Paddle's own launcher, started by llama-train under supervision.

``python -m llama_train.paddle_launch ARGS`` is ``python -m paddle.distributed.launch ARGS`` with
these additions made before Paddle's launcher starts (see ``supervise``):

* it dies with the front process: SIGTERM when the front process exits (Paddle's launcher then
  stops the ranks gracefully: they save and exit), and a hard exit ``supervise.orphan_grace``
  seconds later (at least 5, more when the last measured step and save took longer) if they have
  not, which kills the ranks through their own death signal;
* SIGHUP (a dropped ssh session) is handled as SIGTERM rather than killing the launcher outright,
  and SIGUSR1 (the ranks' save-and-stop, from a scheduler that signals every process) is ignored;
* a repeated stop signal (a scheduler signalling every process, then llama-train forwarding it)
  keeps the first one's graceful stop: Paddle's launcher would cut its 30 s window for the ranks'
  save to 10 s on a second signal;
* that window is at least ``supervise.orphan_grace`` (Paddle's is a fixed 30 s);
* the ranks learn the launcher's pid (``LLAMA_TRAIN_LAUNCHER_PID``) to tie their lives to it;
* each rank's exit is recorded the moment it happens (``supervise.record_exit``), so the front
  blames the first rank that failed, not the first one Paddle's launcher noticed.

The run lock's file descriptor is inherited from the front process and held until this process
exits; the ranks take their own shared lock (``runlock.join_as_rank``).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from llama_train import supervise


def main() -> None:
    front = os.environ.get(supervise.FRONT_PID_ENV)
    os.environ[supervise.LAUNCHER_PID_ENV] = str(os.getpid())
    signal.signal(signal.SIGHUP, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))
    # SIGUSR1 is for the ranks (save and stop at the next step; the front passes it on); a
    # scheduler that signals every process of the job must not kill the launcher with it.
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    exits_dir = os.environ.get(supervise.EXITS_DIR_ENV)
    if front is not None:
        supervise.die_with_parent(signal.SIGTERM, int(front))
        logs = Path(exits_dir) if exits_dir else None
        supervise.watch_parent(
            int(front), lambda: supervise.orphan_grace(logs), lambda: os._exit(1)
        )
    from llama_model.paddle_compat import launch as compat

    compat.keep_the_first_stop()
    if exits_dir:
        logs, run_id = Path(exits_dir), os.environ.get(supervise.RUN_ID_ENV, "")
        compat.stop_window(lambda: supervise.orphan_grace(logs))
        compat.on_rank_start(lambda pid, rank: supervise.record_exit(pid, rank, run_id, logs))
    compat.run(sys.argv[1:])


if __name__ == "__main__":
    main()

"""What the tests reach into a running job with: inert unless their environment variable is set.

* ``LLAMA_TRAIN_FAULT_RAISE=STEP:RANK[:KIND]``: that rank raises at the start of that step, as a
  bug in the step would (KIND ``error``, the default: a RuntimeError), or as a dropped connection
  (``connreset``) or an unreadable data file (``eacces-read``) would; and lingers ``FAULT_LINGER_S``
  before it exits, so that the peers whose connections it closed fail and exit before it does (the
  tests of which rank is blamed).
* ``LLAMA_TRAIN_FAULT_KILL_IN_SAVE=STEP`` / ``LLAMA_TRAIN_FAULT_ENOSPC_IN_SAVE=STEP:RANK``: in the
  save of that step, after the shards are written and before the checkpoint is published, rank 0
  kills itself (SIGKILL), or that rank fails its write as a full disk would (the crash-safety
  tests).
* ``LLAMA_TRAIN_RECORD_INIT_READS=DIR``: each rank writes ``DIR/rank-R.json``, the bytes it read
  (``/proc/self/io`` rchar: every read of the process) while opening the ``--init-from`` weights
  (index, headers) and while filling its parameters (the tests bound a rank's share).
* ``LLAMA_TRAIN_FAULT_RENDEZVOUS=RANK[:always]``: that rank fails in Paddle's rendezvous, in the
  first start of the job only (a marker in its logs says it did), or in every start.
* ``LLAMA_TRAIN_FAKE_DEVICE=NAME[:GiB]``: the front process takes this machine for one with GPUs
  of that kind (a ``llama-train plan --device`` name; with that much memory), so the pre-launch
  memory check of the GPU path runs on a CPU (``plan.prelaunch``).
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

FAULT_RAISE_ENV = "LLAMA_TRAIN_FAULT_RAISE"
FAULT_LINGER_S = 4.0
INIT_READS_ENV = "LLAMA_TRAIN_RECORD_INIT_READS"
KILL_IN_SAVE_ENV = "LLAMA_TRAIN_FAULT_KILL_IN_SAVE"
ENOSPC_IN_SAVE_ENV = "LLAMA_TRAIN_FAULT_ENOSPC_IN_SAVE"
FAKE_DEVICE_ENV = "LLAMA_TRAIN_FAKE_DEVICE"
FAULT_RENDEZVOUS_ENV = "LLAMA_TRAIN_FAULT_RENDEZVOUS"


def _fault(rank: int) -> tuple[int, str] | None:
    parts = os.environ.get(FAULT_RAISE_ENV, "").split(":")
    if len(parts) < 2 or parts[1] != str(rank):
        return None
    return int(parts[0]), parts[2] if len(parts) > 2 else "error"


def linger(rank: int) -> float:
    """Seconds this rank waits at exit under the fault injection (0 without it)."""
    return FAULT_LINGER_S if _fault(rank) is not None else 0.0


def maybe_raise(step: int, rank: int, run) -> None:
    """Raise the injected fault if this is its step and rank."""
    fault = _fault(rank)
    if fault is None or fault[0] != step:
        return
    kind = fault[1]
    if kind == "connreset":
        raise ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))
    if kind == "eacces-read":
        from llama_train.data import blend_pairs

        path = blend_pairs(run.options.data)[0][1] + ".bin"
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    raise RuntimeError(f"injected failure at step {step} on rank {rank}")


def maybe_fail_save(step: int, rank: int, directory: Path) -> None:
    """Kill rank 0, or fail this rank's write, in the save of the step the tests named."""
    if rank == 0 and os.environ.get(KILL_IN_SAVE_ENV) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(ENOSPC_IN_SAVE_ENV) == f"{step}:{rank}":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / f"{rank}_0.distcp"))


def _bytes_read() -> int:
    with open("/proc/self/io", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))


class InitReads:
    """Counts the bytes read while opening the weights and while their ``fill`` runs."""

    def __init__(self, directory: str):
        self.directory = Path(directory)
        self.opening = self.filling = 0

    def opened(self, open_weights):
        before = _bytes_read()
        weights = open_weights()
        self.opening = _bytes_read() - before
        fill = weights.fill

        def counted_fill(module):
            before = _bytes_read()
            fill(module)
            self.filling += _bytes_read() - before

        weights.fill = counted_fill
        return weights

    def write(self, rank: int) -> None:
        from llama_ckpt.atomic import write_atomic

        record = {"rank": rank, "opening": self.opening, "filling": self.filling}
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.directory / f"rank-{rank}.json", json.dumps(record) + "\n")


def init_reads() -> InitReads | None:
    directory = os.environ.get(INIT_READS_ENV)
    return InitReads(directory) if directory else None


def fake_device() -> str | None:
    """The GPU the tests pretend this machine has, or None."""
    return os.environ.get(FAKE_DEVICE_ENV) or None


def maybe_fail_rendezvous(rank: int, logs: Path) -> None:
    """Raise as Paddle's TCPStore does when its protocol falls out of step under load."""
    victim, _, when = os.environ.get(FAULT_RENDEZVOUS_ENV, "").partition(":")
    if victim != str(rank):
        return
    marker = logs / f"fault-rendezvous.{rank}"
    if when != "always" and marker.exists():
        return
    marker.touch()
    raise ValueError("(InvalidArgument) Stop_waiting response is expected (injected)")

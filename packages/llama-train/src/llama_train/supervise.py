"""No process of a job outlives it, and the first rank to fail is the one blamed.

The process tree of a launched job::

    llama-train (the front process: holds the run lock, relays rank 0, reports the outcome)
      └─ python -m llama_train.paddle_launch   (Paddle's own launcher, in its own session)
           └─ python -m llama_train.worker      (one per local rank, each in its own session)

Sessions keep a terminal's signals away from the ranks, so nothing but this module ties their
lives together:

* each child asks the kernel for a signal when its parent dies (``PR_SET_PDEATHSIG``, Linux): the
  launcher gets SIGTERM (Paddle's launcher then stops the ranks gracefully: they save and exit),
  a rank gets SIGKILL (its launcher is gone: nobody would stop or report it);
* the launcher's watchdog gives a graceful stop ``ORPHAN_GRACE_S`` seconds once the front process is
  gone, then exits, which kills the ranks through their death signal;
* the front process watches its ranks through ``/proc`` (:class:`RankWatch`) and kills any that
  is still alive some seconds after the launcher exited.

Which rank is blamed: the launcher, the ranks' parent, learns each rank's exit the moment it dies
(:func:`record_exit`: ``waitid`` without reaping, so Paddle's launcher still reaps and reports as
before) and writes it to ``logs/exit.RANK.json``; the rank reported is the first one that failed,
not the first one Paddle's launcher noticed (it polls once a second, and a killed rank's gloo peers
abort a moment later). ``RankWatch`` (the front's view, through ``/proc``) is the fallback for a
rank whose exit the launcher did not record (a launcher that was itself killed).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from llama_ckpt.atomic import write_atomic
from llama_ckpt.errors import CheckpointError

RUN_ID_ENV = "LLAMA_TRAIN_RUN_ID"  # every process of a job carries it (tests find them by it)
EXITS_DIR_ENV = "LLAMA_TRAIN_EXITS_DIR"  # where the launcher writes the ranks' exit records
FRONT_PID_ENV = "LLAMA_TRAIN_FRONT_PID"
LAUNCHER_PID_ENV = "LLAMA_TRAIN_LAUNCHER_PID"
ORPHAN_GRACE_S = 5.0  # a rank's graceful stop (finish the step, save) once the front is gone
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int, expected_parent: int | None) -> bool:
    """Have the kernel send ``sig`` to this process when its parent exits; if the parent is
    already gone (it died before this call), send it now. False where prctl is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if expected_parent is not None and os.getppid() != expected_parent:
        os.kill(os.getpid(), sig)
    return True


def watch_parent(expected_parent: int, grace_s: float, on_gone) -> threading.Thread:
    """A daemon thread that calls ``on_gone()`` ``grace_s`` seconds after the parent is gone."""

    def run() -> None:
        while os.getppid() == expected_parent:
            time.sleep(0.2)
        time.sleep(grace_s)
        on_gone()

    thread = threading.Thread(target=run, name="llama-train-parent-watch", daemon=True)
    thread.start()
    return thread


# --------------------------------------------------------------------------- the front's view
@dataclass
class RankExit:
    rank: int
    pid: int
    host: str
    time: float  # when it was first seen gone (wall clock, so nodes can be compared)
    # Exit code, or -signal; None when it was reaped before it was seen. Paddle's launcher polls its
    # ranks once a second, so a crash leaves a zombie to read for that long; while it stops the
    # ranks it reaps each at once, so clean exits are often seen as None.
    status: int | None
    run_id: str = ""

    @property
    def failed(self) -> bool:
        return self.status is not None and self.status != 0

    def describe(self) -> str:
        if self.status is None:
            return "exited"
        if self.status < 0:
            return f"was killed by signal {-self.status}"
        return f"exited with code {self.status}"


def _write_record(rank_exit: RankExit, logs: Path) -> None:
    # A record not written (full disk, logs gone) leaves the front's view of that rank.
    with contextlib.suppress(OSError, CheckpointError):
        write_atomic(logs / f"exit.{rank_exit.rank}.json", json.dumps(asdict(rank_exit)) + "\n")


def record_exit(pid: int, rank: int, run_id: str, logs: Path) -> threading.Thread:
    """In the parent of rank ``rank`` (process ``pid``): a daemon thread that waits for it to exit
    and at once writes its exit record. ``WNOWAIT`` leaves the child a zombie, so whoever reaps it
    (Paddle's launcher, once a second) still gets its status; the record's time is the exit's own,
    to within the wake-up of this thread, however late it is reaped."""

    def run() -> None:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:  # reaped before this thread waited: the front's view stands
            return
        killed = info.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
        status = -info.si_status if killed else info.si_status
        _write_record(RankExit(rank, pid, socket.gethostname(), time.time(), status, run_id), logs)

    thread = threading.Thread(target=run, name=f"llama-train-exit-{rank}", daemon=True)
    thread.start()
    return thread


def _read_records(logs: Path, run_id: str) -> dict[int, RankExit]:
    records = {}
    for path in logs.glob("exit.*.json"):
        try:
            record = RankExit(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if record.run_id == run_id:
            records[record.rank] = record
    return records


# Exits that are usually the consequence of another rank's death: a gloo peer aborting, the stop
# the launcher sends, a broken pipe. Used only to order exits seen close together.
_CONSEQUENCES = {-signal.SIGABRT, -signal.SIGTERM, -signal.SIGPIPE}
CONSEQUENCE_LAG_S = 1.0


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _wait_status(fields: list[str]) -> int | None:
    """The exit code (or -signal) of a zombie, from its wait status (stat field 52, Linux ≥ 3.5)."""
    if len(fields) < 50:
        return None
    raw = int(fields[49])
    return -(raw & 0x7F) if raw & 0x7F else (raw >> 8) & 0xFF


def _environ(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            items = fh.read().split(b"\0")
    except OSError:
        return {}
    env = {}
    for item in items:
        key, _, value = item.partition(b"=")
        env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


class RankWatch:
    """The ranks of this node (children of the launcher carrying this job's run id), polled."""

    def __init__(self, launcher_pid: int, run_id: str, local_ranks: int):
        self.launcher_pid = launcher_pid
        self.run_id = run_id
        self.local_ranks = local_ranks
        self.pids: dict[int, int] = {}  # rank -> pid
        self.starts: dict[int, str] = {}  # pid -> start time (guards against a reused pid)
        self.exits: dict[int, RankExit] = {}  # rank -> its exit
        self.host = socket.gethostname()

    def poll(self) -> None:
        if len(self.pids) < self.local_ranks:
            self._discover()
        now = time.time()
        for rank, pid in self.pids.items():
            if rank in self.exits:
                continue
            fields = _stat(pid)
            if fields is None or fields[19] != self.starts[pid]:
                self.exits[rank] = RankExit(rank, pid, self.host, now, None, self.run_id)
            elif fields[0] in ("Z", "X"):
                status = _wait_status(fields)
                self.exits[rank] = RankExit(rank, pid, self.host, now, status, self.run_id)

    def _discover(self) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if pid in self.starts:
                continue
            fields = _stat(pid)
            if fields is None or int(fields[1]) != self.launcher_pid:
                continue
            env = _environ(pid)
            if env.get(RUN_ID_ENV) != self.run_id or "PADDLE_TRAINER_ID" not in env:
                continue
            self.pids[int(env["PADDLE_TRAINER_ID"])] = pid
            self.starts[pid] = fields[19]

    def alive(self) -> list[int]:
        self.poll()
        return [pid for rank, pid in self.pids.items() if rank not in self.exits]

    def kill_remaining(self, wait_s: float) -> list[int]:
        """SIGKILL the ranks still alive ``wait_s`` seconds from now; returns the pids killed."""
        deadline = time.monotonic() + wait_s
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = self.alive()
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return killed

    def write_records(self, logs: Path) -> None:
        """Record the exits the launcher did not (it records each of its ranks' as it happens)."""
        recorded = _read_records(logs, self.run_id)
        for rank_exit in self.exits.values():
            if rank_exit.rank not in recorded:
                _write_record(rank_exit, logs)


def first_failure(logs: Path, run_id: str, extra: list[RankExit] = ()) -> RankExit | None:
    """The earliest failed exit among every node's records (shared logs) and ``extra`` (this
    node's front's view, used for the ranks without a record)."""
    records = _read_records(logs, run_id)
    exits = list(records.values()) + [e for e in extra if e.rank not in records]
    failed = [e for e in exits if e.failed]
    if not failed:
        return None

    # A rank killed by a signal comes first, then one that exited with an error (a gloo peer may
    # raise as well as abort), then the usual consequences. A consequence counts as seen
    # CONSEQUENCE_LAG_S later than it was: a killed rank's peers can abort and be reaped while the
    # killed one is still tearing down its memory (CI saw rank 2's SIGABRT a poll before the
    # SIGKILLed rank 3 it followed).
    def cause(e: RankExit) -> int:
        return 2 if e.status in _CONSEQUENCES else 0 if e.status < 0 else 1

    def seen(e: RankExit) -> float:
        return round(e.time, 2) + (CONSEQUENCE_LAG_S if cause(e) == 2 else 0.0)

    return min(failed, key=lambda e: (seen(e), cause(e), e.rank))

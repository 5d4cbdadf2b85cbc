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
* the launcher's watchdog gives a graceful stop :func:`orphan_grace` seconds once the front
  process is gone (at least ``ORPHAN_GRACE_S``, more when rank 0's last step and save took
  longer), then exits, which kills the ranks through their death signal;
* the front process watches its ranks through ``/proc`` (:class:`RankWatch`) and kills any that
  is still alive some seconds after the launcher exited.

Which rank is blamed: the launcher, the ranks' parent, learns each rank's exit the moment it dies
(:func:`record_exit`: ``waitid`` without reaping, so Paddle's launcher still reaps and reports as
before) and writes it to ``logs/exit.RANK.json``; the rank reported is the first one that failed,
not the first one Paddle's launcher noticed (it polls once a second, and a killed rank's gloo peers
abort a moment later). ``RankWatch`` (the front's view, through ``/proc``) is the fallback for a
rank whose exit the launcher did not record (a launcher that was itself killed).

A rank that raises says why in ``logs/error.RANK`` (:class:`RankReport`, written at once, before
its teardown): its one line, its exit code, the time it raised, and whether the failure is a
consequence of another process's (a connection a peer closed). The rank blamed is then the first
to fail for a reason of its own: a rank that raised counts from the moment it raised, not from its
exit (its teardown can outlast its peers', which fail when its connections close), and a rank
whose exception says that a peer went away comes after every other failed rank.

How long a stop may take before the launcher's watchdog ends the job (:func:`orphan_grace`) comes
from the save time rank 0 measures at each save (``logs/timing.json``).
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
# A rank's graceful stop (finish the step, save) once the front is gone: at least ORPHAN_GRACE_S,
# else from the times rank 0 measured (orphan_grace).
ORPHAN_GRACE_S = 5.0
ORPHAN_GRACE_MARGIN_S = 5.0
TIMING_FILE = "timing.json"
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


def watch_parent(expected_parent: int, grace_s, on_gone) -> threading.Thread:
    """A daemon thread that calls ``on_gone()`` ``grace_s`` seconds after the parent is gone
    (``grace_s`` a number, or a function asked for it at that moment)."""

    def run() -> None:
        while os.getppid() == expected_parent:
            time.sleep(0.2)
        time.sleep(grace_s() if callable(grace_s) else grace_s)
        on_gone()

    thread = threading.Thread(target=run, name="llama-train-parent-watch", daemon=True)
    thread.start()
    return thread


def write_timing(logs: Path, save_s: float, step_s: float, step: int) -> None:
    """Rank 0, after each save: how long the save and the last step took (``logs/timing.json``,
    shared by every node), for :func:`orphan_grace`. Not written is not fatal (the floor holds)."""
    record = {"save_s": round(save_s, 3), "step_s": round(step_s, 3), "step": step,
              "time": time.time()}  # fmt: skip
    with contextlib.suppress(OSError, CheckpointError):
        write_atomic(logs / TIMING_FILE, json.dumps(record) + "\n")


def read_timing(logs: Path | None) -> tuple[float, float] | None:
    """(save_s, step_s) last recorded in ``logs`` (:func:`write_timing`), or None when there is no
    sound record."""
    try:
        record = json.loads((Path(logs) / TIMING_FILE).read_text())
        save_s, step_s = float(record["save_s"]), float(record["step_s"])
    except (OSError, TypeError, ValueError, KeyError):
        return None
    if not (0 <= save_s < 1e6 and 0 <= step_s < 1e6):  # NaN and nonsense fail both
        return None
    return save_s, step_s


def measured_save_s(logs: Path) -> float | None:
    """The last save time recorded in ``logs``, or None."""
    timing = read_timing(logs)
    return None if timing is None else timing[0]


def orphan_grace(logs: Path | None) -> float:
    """Seconds a stop may take once the front process is gone, before the launcher's watchdog
    ends the job (and with it the ranks): ``max(ORPHAN_GRACE_S, step + 2 × save +
    ORPHAN_GRACE_MARGIN_S)`` from the last step and save times rank 0 measured (a stopping rank
    finishes its step, then saves); ORPHAN_GRACE_S before the first measure. The record of an
    earlier run of the same directory counts until this run's first save replaces it."""
    timing = read_timing(logs)
    if timing is None:
        return ORPHAN_GRACE_S
    save_s, step_s = timing
    return max(ORPHAN_GRACE_S, step_s + 2 * save_s + ORPHAN_GRACE_MARGIN_S)


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


def proc_stat(pid: int) -> list[str] | None:
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
            fields = proc_stat(pid)
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
            fields = proc_stat(pid)
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


# --------------------------------------------------------------------- what a rank says itself
@dataclass
class RankReport:
    """``logs/error.RANK``: the one line of a rank's failure, written by the rank itself."""

    rank: int
    code: int  # the exit code it exits with (1 a crash, 2 a user's mistake, 3 non-finite)
    message: str
    time: float  # when it raised (wall clock)
    consequence: bool = False  # its exception says another process went away
    run_id: str = ""


def report_file(logs: Path, rank: int) -> Path:
    return logs / f"error.{rank}"


def write_report(logs: Path, report: RankReport) -> bool:
    """Write a rank's report atomically (never half a line to read); False if it could not be
    written (a full disk: the rank's stderr still has the line)."""
    try:
        logs.mkdir(parents=True, exist_ok=True)
        write_atomic(report_file(logs, report.rank), json.dumps(asdict(report)) + "\n")
    except (OSError, CheckpointError):
        return False
    return True


def read_reports(logs: Path, run_id: str) -> dict[int, RankReport]:
    reports = {}
    for path in logs.glob("error.*"):
        try:
            report = RankReport(**{"rank": int(path.suffix[1:]), **json.loads(path.read_text())})
        except (OSError, ValueError, TypeError):
            continue
        if report.run_id in ("", run_id):
            reports[report.rank] = report
    return reports


def first_failure(logs: Path, run_id: str, extra: list[RankExit] = ()) -> RankExit | None:
    """The first rank to fail for a reason of its own, among every node's exit records and the
    ranks' own reports (shared logs) and ``extra`` (this node's front's view, used for the ranks
    without a record)."""
    records = _read_records(logs, run_id)
    exits = {e.rank: e for e in extra if e.rank not in records}
    exits.update(records)
    reports = read_reports(logs, run_id)
    failed = [e for e in exits.values() if e.failed or e.rank in reports]
    failed += [
        RankExit(rank, 0, "", report.time, report.code, run_id)
        for rank, report in reports.items()
        if rank not in exits
    ]
    if not failed:
        return None

    # A rank that said its failure follows from another process's comes after every other. Among
    # the rest, by time: a rank that raised from the moment it raised (its own exit can come
    # seconds later, after peers that failed when its connections closed); a rank killed by a
    # signal comes first, then one that raised or exited with an error, then the usual
    # consequences. A consequence of a death counts as seen CONSEQUENCE_LAG_S later than it was:
    # a killed rank's peers can abort and be reaped while the killed one is still tearing down
    # its memory (CI saw rank 2's SIGABRT a poll before the SIGKILLed rank 3 it followed), and
    # they can raise before it is reaped (a gloo TIMEOUT 1 ms before the SIGKILLed rank's exit):
    # a report counts that much later too, unless its rank exited earlier still.
    def follows(e: RankExit) -> bool:
        return e.rank in reports and reports[e.rank].consequence

    def cause(e: RankExit) -> int:
        if e.rank in reports:
            return 1
        return 2 if e.status in _CONSEQUENCES else 0 if e.status < 0 else 1

    def seen(e: RankExit) -> float:
        if e.rank in reports:
            return round(min(e.time, reports[e.rank].time + CONSEQUENCE_LAG_S), 2)
        return round(e.time, 2) + (CONSEQUENCE_LAG_S if cause(e) == 2 else 0.0)

    return min(failed, key=lambda e: (follows(e), seen(e), cause(e), e.rank))

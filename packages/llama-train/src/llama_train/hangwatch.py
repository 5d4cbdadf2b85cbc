"""Hang detection: each rank says where it is, the front process notices when none moves on.

A rank reports its progress (:class:`ProgressReport`) at each phase: ``rendezvous`` (Paddle's
collective set-up), ``start-up`` (building the model, loading a checkpoint), ``step`` k, ``eval``
and ``save`` after step k, ``done``; with its last step, save and evaluation times. A report is one small fixed-size record
rewritten in place in ``OUTPUT/logs/progress.<rank>`` (one ``pwrite``: no allocation, no rename,
nothing that can block on a busy disk for long).

The front process (:class:`HangWatch`, polled every ``POLL_S``) notes when each rank's record last
changed, by its own monotonic clock. When no rank's has changed for the allowance of the phases
the ranks are in (the largest of them: a rank waiting in a collective for one that saves is
covered by the save's), the job hangs: every live rank of this node is asked for its Python
stacks (``faulthandler``, registered on ``STACKS_SIGNAL`` by each rank into
``logs/stacks.<rank>``; a C-level handler, so a rank blocked inside a collective still answers),
which land with a report in ``OUTPUT/logs/hang-<attempt>/``, and the ranks are killed. The rank
blamed is the one whose progress is oldest: a stopped process (``T`` in ``/proc``) or one in an
uninterruptible wait (``D``: a dead mount) first, then the fewest steps completed, then the
earliest last change.

``--hang-timeout auto`` (:func:`allowance`):

* start-up and the first step of an attempt: ``STARTUP_S`` (30 min: loading weights, compiling),
  and the exit after the last step;
* a step: ``max(STEP_FLOOR_S, STEP_FACTOR × median step time)`` over the steps measured so far;
* a save: ``max(SAVE_FLOOR_S, SAVE_FACTOR × last save time)``, before any save ``STARTUP_S``;
* an evaluation: ``max(EVAL_FLOOR_S, SAVE_FACTOR × last evaluation time)``, before any
  ``max(EVAL_FLOOR_S, STEP_FACTOR × eval iters × median step)``.

``--hang-timeout SECONDS`` is the allowance of every step, save and evaluation; start-up keeps its
own.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import shutil
import signal
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llama_train.supervise import measured_save_s, proc_stat

POLL_S = 1.0
STARTUP_S = 1800.0
STEP_FLOOR_S = 120.0
STEP_FACTOR = 10.0
SAVE_FLOOR_S = 120.0
SAVE_FACTOR = 3.0
EVAL_FLOOR_S = 120.0
STACKS_SIGNAL = signal.SIGUSR2
STACKS_WAIT_S = 3.0  # how long the ranks get to write their stacks
_RECORD_BYTES = 160
_MEDIAN_OF = 50  # step times kept for the median
PHASES = ("rendezvous", "start-up", "step", "eval", "save", "done")


def progress_file(logs: Path, rank: int) -> Path:
    return logs / f"progress.{rank}"


def stacks_file(logs: Path, rank: int) -> Path:
    return logs / f"stacks.{rank}"


# ---------------------------------------------------------------------------------- the rank's
class ProgressReport:
    """This rank's progress record, and its stacks on request (``STACKS_SIGNAL``)."""

    def __init__(self, logs: Path, rank: int):
        self.fd = os.open(progress_file(logs, rank), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.stacks = open(stacks_file(logs, rank), "w")  # noqa: SIM115 - held for the handler
        faulthandler.register(STACKS_SIGNAL, file=self.stacks, all_threads=True)
        self.seq = 0
        self.step_s = self.save_s = self.eval_s = 0.0

    def __call__(self, phase: str, step: int, completed: int) -> None:
        self.seq += 1
        line = (f"{self.seq} {phase} {step} {completed} {self.step_s:.4f} {self.save_s:.4f} "
                f"{self.eval_s:.4f}")  # fmt: skip
        with contextlib.suppress(OSError):  # a full disk must not stop training
            os.pwrite(self.fd, line.ljust(_RECORD_BYTES - 1).encode() + b"\n", 0)

    def close(self) -> None:
        faulthandler.unregister(STACKS_SIGNAL)
        os.close(self.fd)
        empty = self.stacks.tell() == 0
        self.stacks.close()
        if empty:
            with contextlib.suppress(OSError):
                os.unlink(self.stacks.name)


class NoProgress:
    """The report of a rank nobody watches (a job run inside llama-train's own process)."""

    step_s = save_s = eval_s = 0.0

    def __call__(self, phase: str, step: int, completed: int) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Progress:
    seq: int
    phase: str
    step: int
    completed: int
    step_s: float
    save_s: float
    eval_s: float


def read_progress(path: Path) -> Progress | None:
    try:
        with open(path, "rb") as fh:
            fields = fh.read(_RECORD_BYTES).decode("ascii", "replace").split()
        seq, phase, step, completed = int(fields[0]), fields[1], int(fields[2]), int(fields[3])
        times = [float(v) for v in fields[4:7]]
    except (OSError, ValueError, IndexError):
        return None
    if phase not in PHASES:
        return None
    return Progress(seq, phase, step, completed, *times)


# --------------------------------------------------------------------------------- the front's
@dataclass(frozen=True)
class Policy:
    """``--hang-timeout``: ``seconds`` None for auto, 0 for never."""

    seconds: float | None
    eval_iters: int = 10

    @property
    def enabled(self) -> bool:
        return self.seconds != 0


def allowance(policy: Policy, phase: str, completed: int, first: int, steps: list[float],
              save_s: float | None, eval_s: float | None) -> float:  # fmt: skip
    """Seconds a rank in ``phase`` may go without progress. ``first``: the first step of this
    attempt; ``steps``: step times measured so far; ``save_s``/``eval_s``: the last measured."""
    if phase in ("rendezvous", "start-up", "done") or (phase == "step" and completed < first):
        return STARTUP_S if policy.seconds is None else max(policy.seconds, STARTUP_S)
    if policy.seconds is not None:
        return policy.seconds
    median = statistics.median(steps) if steps else None
    if phase == "save":
        return STARTUP_S if save_s is None else max(SAVE_FLOOR_S, SAVE_FACTOR * save_s)
    if phase == "eval":
        if eval_s is not None:
            return max(EVAL_FLOOR_S, SAVE_FACTOR * eval_s)
        if median is None:
            return STARTUP_S
        return max(EVAL_FLOOR_S, STEP_FACTOR * policy.eval_iters * median)
    if median is None:
        return STARTUP_S
    return max(STEP_FLOOR_S, STEP_FACTOR * median)


@dataclass
class RankSeen:
    progress: Progress | None = None
    changed: float = 0.0  # front's monotonic clock


@dataclass
class Hang:
    """What the front saw when it declared the job hung."""

    attempt: int
    silent_s: float  # since the last progress of any rank
    allowance_s: float
    blamed: int
    ranks: list[dict] = field(default_factory=list)  # per rank: step, phase, silent_s, state
    stacks: str = ""  # the folder with the stacks and this report

    def line(self) -> str:
        blamed = next(r for r in self.ranks if r["rank"] == self.blamed)
        state = f", process {blamed['state']}" if blamed.get("state") else ""
        return (
            f"no rank made progress for {self.silent_s:.0f} s (allowed {self.allowance_s:.0f} s); "
            f"rank {self.blamed} has the oldest progress (step {blamed['step']}, phase "
            f"{blamed['phase']}{state}); stacks in {self.stacks}"
        )


_STATE_NAMES = {"T": "stopped", "t": "stopped by a tracer", "D": "in an uninterruptible wait",
                "Z": "exited", "R": "running", "S": "waiting"}  # fmt: skip


class HangWatch:
    """The front's view of every rank's progress (all nodes: the logs are shared)."""

    def __init__(self, logs: Path, world_size: int, policy: Policy, attempt: int, start_step: int):
        self.logs = logs
        self.world_size = world_size
        self.policy = policy
        self.attempt = attempt
        self.first = start_step + 1
        self.seen = {rank: RankSeen(changed=time.monotonic()) for rank in range(world_size)}
        self.step_times: list[float] = []
        self.save_s: float | None = measured_save_s(logs)
        self.eval_s: float | None = None
        self._last_poll = 0.0

    def poll(self) -> None:
        now = time.monotonic()
        for rank, seen in self.seen.items():
            progress = read_progress(progress_file(self.logs, rank))
            if progress is None or (seen.progress and progress.seq == seen.progress.seq):
                continue
            new_step = not seen.progress or progress.step_s != seen.progress.step_s
            if rank == 0 and progress.step_s > 0 and new_step:
                self.step_times = [*self.step_times, progress.step_s][-_MEDIAN_OF:]
            if rank == 0 and progress.save_s > 0:
                self.save_s = progress.save_s
            if rank == 0 and progress.eval_s > 0:
                self.eval_s = progress.eval_s
            seen.progress, seen.changed = progress, now

    def phases(self) -> dict[int, str]:
        """Each rank's last reported phase (ranks that reported nothing are left out)."""
        return {rank: seen.progress.phase for rank, seen in self.seen.items() if seen.progress}

    def completed(self) -> int | None:
        """The last step rank 0 completed, as far as it reported."""
        progress = self.seen[0].progress
        return progress.completed if progress else None

    def check(self, pids: dict[int, int]) -> Hang | None:
        """A Hang when no rank has made progress for its allowance; None otherwise (polled at most
        once every POLL_S). ``pids``: this node's ranks (rank -> pid)."""
        if not self.policy.enabled or time.monotonic() - self._last_poll < POLL_S:
            return None
        self._last_poll = time.monotonic()
        self.poll()
        now = time.monotonic()
        silent = now - max(seen.changed for seen in self.seen.values())
        allowed = max(self._allowance(seen.progress) for seen in self.seen.values())
        if silent <= allowed:
            return None
        ranks = []
        for rank, seen in self.seen.items():
            p = seen.progress
            state = _proc_state(pids[rank]) if rank in pids else None
            ranks.append({"rank": rank, "phase": p.phase if p else "start-up",
                          "step": p.step if p else 0, "completed": p.completed if p else 0,
                          "silent_s": round(now - seen.changed, 1),
                          "state": _STATE_NAMES.get(state, state) if state else None,
                          "_state": state})  # fmt: skip

        def age(r: dict) -> tuple:
            stuck = 0 if r["_state"] in ("T", "t") else 1 if r["_state"] == "D" else 2
            return (stuck, r["completed"], -r["silent_s"], r["rank"])

        blamed = min(ranks, key=age)["rank"]
        for r in ranks:
            del r["_state"]
        return Hang(self.attempt, round(silent, 1), round(allowed, 1), blamed, ranks)

    def _allowance(self, progress: Progress | None) -> float:
        phase = progress.phase if progress else "start-up"
        completed = progress.completed if progress else 0
        return allowance(self.policy, phase, completed, self.first, self.step_times, self.save_s,
                         self.eval_s)  # fmt: skip


def _proc_state(pid: int) -> str | None:
    fields = proc_stat(pid)
    return fields[0] if fields else None


def collect_stacks(hang: Hang, logs: Path, pids: dict[int, int]) -> Path:
    """Ask this node's live ranks for their stacks, wait for them, and keep them with the hang's
    report in ``logs/hang-<attempt>/`` (``rank-R.txt``, ``report.json``); returns that folder."""
    folder = logs / f"hang-{hang.attempt}"
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for rank, pid in pids.items():
        path = stacks_file(logs, rank)
        sizes[rank] = path.stat().st_size if path.exists() else 0
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, STACKS_SIGNAL)
    deadline = time.monotonic() + STACKS_WAIT_S
    # a stopped process cannot answer: no wait for it
    waiting = {rank for rank in pids if _proc_state(pids[rank]) not in ("T", "t")}
    while waiting and time.monotonic() < deadline:
        time.sleep(0.1)
        for rank in list(waiting):
            path = stacks_file(logs, rank)
            if path.exists() and path.stat().st_size > sizes[rank]:
                waiting.discard(rank)
    time.sleep(0.2)  # the last lines of the dumps that have begun
    for rank in pids:
        target = folder / f"rank-{rank}.txt"
        path = stacks_file(logs, rank)
        with contextlib.suppress(OSError), open(path, "rb") as src, open(target, "wb") as dst:
            src.seek(sizes[rank])
            shutil.copyfileobj(src, dst)
        if not target.exists() or target.stat().st_size == 0:
            with open(target, "a") as dst:
                state = next((r["state"] for r in hang.ranks if r["rank"] == rank), None)
                dst.write(f"rank {rank} did not answer the stack request"
                          f"{f' (process {state})' if state else ''}\n")  # fmt: skip
    hang.stacks = str(folder)
    (folder / "report.json").write_text(json.dumps(asdict(hang), indent=2) + "\n")
    return folder

"""``--max-restarts N``: a job whose rank failed starts again by itself, from its last complete
checkpoint, and keeps a ledger of what each failure cost.

After a start that failed, the front process of node 0 decides:

* never again after a user's mistake (exit 2), a non-finite loss (exit 3) or a stop the user asked
  for (a signal): those would fail the same way, or were meant;
* not when the restarts are used up, in a crash loop (``CRASH_LOOP`` starts in a row that
  completed no new step), or when the wall-clock limit leaves no time;
* otherwise after a back-off (:func:`backoff_s`: 5 s, doubling, at most 5 min), from the run's
  latest complete checkpoint (``preparation.prepare_restart``: checked and vetted as at a first
  start), with the same run directory, lock and run id, and a new rendezvous.

A start that failed in Paddle's rendezvous (:func:`failed_in_rendezvous`) is tried once more
after ``RENDEZVOUS_WAIT_S``, with or without ``--max-restarts`` and not counted against it.

Each failed start appends one record to ``OUTPUT/restarts.jsonl`` (:func:`ledger_record`) and
prints one line. What the failed start's processes wrote about themselves (exit records, error
reports) moves to ``OUTPUT/logs/attempt-<N>/``; the ranks' logs go on in the same files.

On a multi-node job the other nodes follow node 0's decision, which it publishes in
``OUTPUT/logs/restart.json`` (the output is shared): they start again with it, or stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

from llama_ckpt.atomic import write_atomic
from llama_ckpt.clikit import EXIT_CRASH, EXIT_NON_FINITE, Failure
from llama_train.errors import TrainError

BACKOFF_FIRST_S = 5.0
BACKOFF_CAP_S = 300.0
CRASH_LOOP = 2  # starts in a row without a new step
RENDEZVOUS_WAIT_S = 2.0  # before a start whose rendezvous failed is tried again
LEDGER = "restarts.jsonl"
DECISION = "restart.json"
FOLLOW_WAIT_S = 600.0  # how long another node waits for node 0's decision


def backoff_s(restart: int) -> float:
    """The wait before restart number ``restart`` (1, 2, ...)."""
    return min(BACKOFF_FIRST_S * 2 ** (restart - 1), BACKOFF_CAP_S)


def failed_in_rendezvous(result, failure: Failure) -> bool:
    """Whether a start crashed in Paddle's rendezvous (the collective set-up before the model is
    built: every rank that reported is still there or just past it, one of them there). Under load
    Paddle's TCPStore and gloo's mesh set-up fail now and then (``Stop_waiting response is
    expected``, a refused connection); such a start is tried once more, restarts or not."""
    phases = set(result.phases.values())
    return (
        failure.exit_code == EXIT_CRASH
        and not result.signalled
        and result.hang is None
        and "rendezvous" in phases
        and phases <= {"rendezvous", "start-up"}
    )


def cause_of(result) -> dict:
    """What ended a start, for the ledger: the rank and its exit code, signal or hang."""
    if result.hang is not None:
        hang = result.hang
        blamed = next(r for r in hang.ranks if r["rank"] == hang.blamed)
        return {"rank": hang.blamed, "hang": {"silent_s": hang.silent_s, "phase": blamed["phase"],
                                              "step": blamed["step"], "stacks": hang.stacks}}  # fmt: skip
    failed = result.failed
    if failed is None:
        return {"launcher_exit_code": result.returncode}
    cause: dict = {"rank": failed.rank}
    if failed.status is not None and failed.status < 0:
        cause["signal"] = -failed.status
    else:
        cause["exit_code"] = failed.status
    if result.report is not None:
        cause["message"] = result.report.message
    return cause


def describe(cause: dict) -> str:
    if "hang" in cause:
        hang = cause["hang"]
        return f"rank {cause['rank']} hung (step {hang['step']}, phase {hang['phase']})"
    if "signal" in cause:
        return f"rank {cause['rank']} was killed by signal {cause['signal']}"
    if "rank" in cause:
        return f"rank {cause['rank']} exited with code {cause['exit_code']}"
    return f"the launcher exited with code {cause['launcher_exit_code']}"


def ledger_record(attempt: int, cause: dict, last_step: int, **fields) -> dict:
    """One line of ``restarts.jsonl``: ``attempt`` (the start that failed, 0 the first), ``time``
    (ISO 8601, UTC), ``cause``, ``last_step`` (the last step it completed), then either
    ``action: "restart"`` with ``resumed_from`` (the checkpoint's directory name, null from the
    start), ``steps_lost`` and ``wait_s``, or ``action: "stop"`` with ``reason``."""
    return {"attempt": attempt, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cause": cause, "last_step": last_step, **fields}  # fmt: skip


def append_ledger(output: Path, record: dict) -> None:
    with contextlib.suppress(OSError), open(output / LEDGER, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def read_ledger(output: Path) -> list[dict]:
    try:
        lines = (output / LEDGER).read_text().splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def _why_not(failure: Failure, result, attempt: int, max_restarts: int, idle: int) -> str | None:
    if failure.exit_code == EXIT_NON_FINITE:
        return "a non-finite loss is never retried"
    if failure.exit_code != EXIT_CRASH:
        return "a user's mistake is never retried"
    if result.signalled:
        return "the job was stopped by a signal"
    if attempt >= max_restarts:
        return f"no restarts left (--max-restarts {max_restarts})"
    if idle >= CRASH_LOOP:
        return f"crash loop: the last {idle} starts completed no new step"
    return None


class _Interrupted(Exception):
    pass


def _wait(seconds: float) -> None:
    """Sleep, ending early (``_Interrupted``) on a stop signal."""

    def stop(signum, frame):
        raise _Interrupted

    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, stop) for sig in stops}
    try:
        time.sleep(seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_job(prepared, say: Callable[[str], None], start) -> None:
    """Run the job of ``prepared`` (``preparation.Prepared``), restarting it as ``--max-restarts``
    allows; raises the ``Failure`` of the start it gave up on. ``start(prepared, attempt)`` runs one
    start and returns ``(JobResult, Failure or None)``."""
    from llama_train.launcher import start_step
    from llama_train.preparation import prepare_restart

    run = prepared.run
    max_restarts = run.options.resilience.max_restarts
    output, logs = Path(run.output), Path(run.output) / "logs"
    follower = run.nodes.node_rank > 0
    attempt, idle, rendezvous_retried = 0, 0, False
    while True:
        begin = start_step(prepared.run)
        result, failure = start(prepared, attempt)
        if failure is None:
            return
        rendezvous = not rendezvous_retried and failed_in_rendezvous(result, failure)
        if max_restarts == 0 and not rendezvous:
            if run.nodes.nnodes > 1 and not follower:
                _publish(logs, prepared.run_id, attempt + 1, "stop")
            raise failure
        if follower:
            rendezvous_retried = rendezvous_retried or rendezvous
            prepared = _follow(prepared, attempt + 1, failure)
            attempt += 1
            say(f"node 0 starts the job again ({failure.message})")
            continue
        cause = cause_of(result)
        if rendezvous:
            rendezvous_retried = True
            try:
                prepared = prepare_restart(prepared, logs / f"attempt-{attempt}")
            except TrainError as exc:
                raise Failure(f"{failure.message}; not started again: {exc}", EXIT_CRASH) from None
            attempt += 1
            append_ledger(output, ledger_record(attempt - 1, cause, begin, action="rendezvous",
                                                wait_s=RENDEZVOUS_WAIT_S))  # fmt: skip
            _publish(logs, prepared.run_id, attempt, "restart")
            say(f"Paddle's rendezvous failed ({describe(cause)}); starting again in "
                f"{RENDEZVOUS_WAIT_S:.0f} s (not counted as a restart)")  # fmt: skip
            time.sleep(RENDEZVOUS_WAIT_S)
            continue
        last = result.completed if result.completed is not None else begin
        idle = 0 if last > begin else idle + 1
        why = _why_not(failure, result, attempt, max_restarts, idle)
        wait = backoff_s(attempt + 1)
        deadline = prepared.run.deadline
        if why is None and deadline is not None and time.time() + wait > deadline:
            why = "no time left before the wall-clock limit"
        if why is None:
            try:
                prepared = prepare_restart(prepared, logs / f"attempt-{attempt}")
            except TrainError as exc:
                why = f"cannot restart: {exc}"
        if why is not None:
            append_ledger(output, ledger_record(attempt, cause, last, action="stop", reason=why))
            _publish(logs, prepared.run_id, attempt + 1, "stop")
            raise Failure(f"{failure.message}; not restarted: {why}", failure.exit_code)
        resumed = prepared.run.resume
        resumed_step = start_step(prepared.run)
        attempt += 1
        record = ledger_record(attempt - 1, cause, last, action="restart",
                               resumed_from=Path(resumed).name if resumed else None,
                               steps_lost=max(0, last - resumed_step), wait_s=wait)  # fmt: skip
        append_ledger(output, record)
        _publish(logs, prepared.run_id, attempt, "restart")
        say(
            f"restart {attempt}/{max_restarts} in {wait:.0f} s: {describe(cause)} after step "
            f"{last}; resuming from {record['resumed_from'] or 'the start'} "
            f"({record['steps_lost']} step(s) lost; see {output / LEDGER})"
        )
        try:
            _wait(wait)
        except _Interrupted:
            why = "stopped by a signal during the back-off"
            record = ledger_record(attempt - 1, cause, last, action="stop", reason=why)
            append_ledger(output, record)
            _publish(logs, prepared.run_id, attempt, "stop")
            raise Failure(
                f"{failure.message}; not restarted: stopped by a signal", failure.exit_code
            ) from None


def _publish(logs: Path, run_id: str, attempt: int, action: str) -> None:
    """Node 0's decision for the other nodes: start ``attempt`` or stop."""
    record = {"attempt": attempt, "action": action, "run_id": run_id}
    with contextlib.suppress(OSError):
        write_atomic(logs / DECISION, json.dumps(record) + "\n")


def read_decision(logs: Path, run_id: str) -> dict:
    """Node 0's last decision for this job (run id), or ``{}``."""
    try:
        decision = json.loads((logs / DECISION).read_text())
    except (OSError, ValueError):
        return {}
    return decision if isinstance(decision, dict) and decision.get("run_id") == run_id else {}


def decided(logs: Path, run_id: str, attempt: int) -> bool:
    """Whether node 0 has decided about a start after ``attempt`` (another node's ranks of the
    failed start then stop at once, rather than wait for their collectives to time out)."""
    return read_decision(logs, run_id).get("attempt", -1) > attempt


def _follow(prepared, attempt: int, failure: Failure):
    """On a node other than 0: wait for node 0's decision about ``attempt``; return the prepared
    next start (node 0's new record, this node's topology), or raise ``failure``."""
    from llama_train.run_record import RunRecord

    run = prepared.run
    logs = Path(run.output) / "logs"
    deadline = time.monotonic() + FOLLOW_WAIT_S
    while time.monotonic() < deadline:
        decision = read_decision(logs, prepared.run_id)
        if decision.get("attempt", -1) >= attempt:
            if decision.get("action") != "restart":
                raise Failure(
                    f"{failure.message}; node 0 did not restart the job", failure.exit_code
                )
            record = RunRecord.read(str(Path(run.output) / "run_config.json"))
            return dataclasses.replace(
                prepared, run=dataclasses.replace(record, topology=run.topology)
            )
        time.sleep(1.0)
    raise Failure(
        f"{failure.message}; node 0 decided nothing in {FOLLOW_WAIT_S:.0f} s", failure.exit_code
    )

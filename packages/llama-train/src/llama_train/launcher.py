"""Starting the ranks through Paddle's own launcher, and watching them.

``llama-train`` builds and runs::

    python -m llama_train.paddle_launch --nproc_per_node N --log_dir OUTPUT/logs/paddle/node-K \
        [--nnodes K --master IP:PORT --rank R]  python -u -m llama_train.worker OUTPUT/run_config.json

``llama_train.paddle_launch`` is ``paddle.distributed.launch`` under supervision (``supervise``), so
the same command runs on a CPU box (the launcher picks gloo when it selects no device) and on a GPU
cluster (NCCL). Paddle's launcher already does what a job needs when a rank dies: it sends SIGTERM
to the other ranks of the node, kills them 3 s later and exits (its ``--elastic_level`` default, -1,
never restarts). This module relays rank 0's console lines, which its console also appends to
``OUTPUT/logs/events.jsonl`` as JSON (each rank's own output goes to ``workerlog.<global rank>``),
to the front process's console (a progress bar on a terminal), keeps the
launcher's own output in ``OUTPUT/logs/launcher.log``, passes SIGTERM, SIGINT and SIGHUP on to the
launcher as SIGTERM (which forwards it to the ranks: they save a checkpoint and exit), watches the
ranks' exits, and turns the outcome into one line naming the first rank that failed.

A one-process job on one node does not go through the launcher: it runs in the calling process
(no rendezvous to set up, a couple of seconds faster to the first step, same code path otherwise).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from llama_train import hangwatch, restarts, supervise
from llama_train.console import Console
from llama_train.worker import events_file

# Rank 0's lines meant for the user; Paddle's own chatter stays in the logs.
_FAILED_CONTAINER = re.compile(r"Container rank (\d+) status failed .*? code (-?\d+)")
_WATCH_EVERY_S = 0.05  # how finely the ranks' exits are timed
_RELAY_EVERY_S = 0.2


@dataclass
class JobResult:
    returncode: int
    failed: supervise.RankExit | None = None  # the rank blamed
    signalled: bool = False
    report: supervise.RankReport | None = None  # what the blamed rank said about its failure
    hang: hangwatch.Hang | None = None  # the job was stopped because no rank made progress
    completed: int | None = None  # the last step rank 0 reported completed
    phases: dict[int, str] = field(default_factory=dict)  # each rank's last reported phase


def launcher_log(run) -> Path:
    """This node's log of Paddle's launcher, of a ``RunRecord``."""
    nodes, logs = run.nodes, Path(run.output) / "logs"
    return logs / ("launcher.log" if nodes.nnodes == 1 else f"launcher.node{nodes.node_rank}.log")


def worker_command(config_path: str) -> list[str]:
    return [sys.executable, "-u", "-m", "llama_train.worker", config_path]


def launch_command(run, config_path: str) -> list[str]:
    # Paddle's launcher names its files by local rank: one folder per node keeps a shared output
    # readable; the ranks write their own OUTPUT/logs/workerlog.<global rank>.
    nodes = run.nodes
    logs = str(Path(run.output) / "logs" / "paddle" / f"node-{nodes.node_rank}")
    cmd = [
        sys.executable,
        "-m",
        "llama_train.paddle_launch",
        "--nproc_per_node",
        str(nodes.nproc_per_node),
        "--log_dir",
        logs,
    ]
    if nodes.nnodes > 1:
        cmd += ["--nnodes", str(nodes.nnodes), "--master", nodes.master]
        cmd += ["--rank", str(nodes.node_rank)]
    return cmd + worker_command(config_path)


class _LogTail:
    """New lines of a file that a rank appends to (rank 0's ``events.jsonl``)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.partial = ""

    def lines(self) -> list[str]:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
                self.offset = fh.tell()
        except FileNotFoundError:
            return []
        text = self.partial + chunk
        *done, self.partial = text.split("\n")
        return done


def run_launched(
    run, config_path: str, console: Console, run_id: str, lock_fd: int | None, attempt: int = 0
) -> JobResult:
    """Run the job of a ``RunRecord`` through Paddle's launcher until every rank of this node has
    exited: relay rank 0's lines, pass stop signals on, stop the job at its deadline (SIGTERM: the
    ranks save) and when it hangs (the ranks' stacks kept, then killed). ``attempt``: how many
    times the job was restarted before this start (``restarts``)."""
    logs = Path(run.output) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env[supervise.RUN_ID_ENV] = run_id
    env[supervise.FRONT_PID_ENV] = str(os.getpid())
    env[supervise.EXITS_DIR_ENV] = str(logs)
    result = JobResult(returncode=0)
    tail = _LogTail(events_file(run.output))

    def relay() -> None:
        for text in tail.lines():
            try:
                event = json.loads(text)
            except ValueError:  # a line cut by a crash mid-write
                continue
            console.line(event["text"])

    with open(launcher_log(run), "a", encoding="utf-8") as log:
        log_start = log.tell()  # earlier runs' lines stay in the file
        proc = subprocess.Popen(
            launch_command(run, config_path),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches it only through us, once
            pass_fds=() if lock_fd is None else (lock_fd,),
        )
        watch = supervise.RankWatch(proc.pid, run_id, run.procs_per_node)
        hangs = hangwatch.HangWatch(logs, run.world_size, hang_policy(run), attempt,
                                    start_step(run))  # fmt: skip
        follower = run.nodes.node_rank > 0

        def forward(signum, frame):
            result.signalled = True
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

        def save_and_exit(signum, frame):  # SIGUSR1: the ranks save at the next step and stop
            for pid in watch.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR1)

        stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {sig: signal.signal(sig, forward) for sig in stops}
        previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, save_and_exit)
        try:
            last_relay = last_decision = 0.0
            deadline_sent = False
            while proc.poll() is None:
                watch.poll()
                if time.monotonic() - last_relay >= _RELAY_EVERY_S:
                    relay()
                    last_relay = time.monotonic()
                if result.hang is None:
                    result.hang = hangs.check(watch.pids)
                    if result.hang is not None:
                        stop_hung_job(result.hang, logs, watch, console)
                if follower and time.monotonic() - last_decision >= hangwatch.POLL_S:
                    last_decision = time.monotonic()
                    if restarts.decided(
                        logs, run_id, attempt
                    ):  # node 0 has moved on: this start is over
                        watch.kill_remaining(0)
                if run.deadline is not None and time.time() > run.deadline and not deadline_sent:
                    # the ranks should have stopped at a step boundary by now (a long start-up)
                    deadline_sent = True
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)
                time.sleep(_WATCH_EVERY_S)
            result.returncode = proc.returncode
            hangs.poll()
            result.completed, result.phases = hangs.completed(), hangs.phases()
            # Normally Paddle's launcher has stopped its ranks; if it was killed, they die with it
            # (their death signal). Anything still alive after the grace period is killed here.
            watch.kill_remaining(supervise.orphan_grace(logs))
            relay()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                watch.kill_remaining(0)
    watch.write_records(logs)
    result.failed = supervise.first_failure(logs, run_id, list(watch.exits.values()))
    if result.failed is not None:
        result.report = supervise.read_reports(logs, run_id).get(result.failed.rank)
    if result.failed is None and result.returncode != 0:
        # No rank seen failing (e.g. reaped before a poll): Paddle's launcher's own account, from
        # this run's lines; it numbers the ranks of this node from 0.
        with open(launcher_log(run), encoding="utf-8", errors="replace") as fh:
            fh.seek(log_start)
            found = _FAILED_CONTAINER.search(fh.read())
        if found:
            rank = run.nodes.node_rank * run.procs_per_node + int(found.group(1))
            result.failed = supervise.RankExit(
                rank, 0, "", time.time(), int(found.group(2)), run_id
            )
    return result


def hang_policy(run) -> hangwatch.Policy:
    from llama_train.options import hang_timeout_s

    resilience = run.options.resilience
    return hangwatch.Policy(hang_timeout_s(resilience.hang_timeout), run.options.eval.eval_iters)


def start_step(run) -> int:
    """The step the job starts from: its checkpoint's, or 0."""
    if run.resume is None:
        return 0
    from llama_train.checkpoint import TrainerState

    try:
        return TrainerState.read(Path(run.resume)).step
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def stop_hung_job(hang: hangwatch.Hang, logs: Path, watch: supervise.RankWatch, console) -> None:
    """Keep the hung ranks' stacks, say so, and kill the ranks of this node (a rank stuck in a
    collective never reaches the step boundary where a stop signal is honoured)."""
    pids = {rank: pid for rank, pid in watch.pids.items() if rank not in watch.exits}
    hangwatch.collect_stacks(hang, logs, pids)
    console.line(f"hang: {hang.line()}")
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

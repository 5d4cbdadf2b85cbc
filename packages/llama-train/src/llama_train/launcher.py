"""Starting the ranks through Paddle's own launcher, and watching them.

``llama-train`` builds and runs::

    python -m paddle.distributed.launch --nproc_per_node N --log_dir OUTPUT/logs \
        [--nnodes K --master IP:PORT --rank R]  python -u -m llama_train.worker OUTPUT/run_config.json

so the same command runs on a CPU box (the launcher picks gloo when it selects no device) and on a
GPU cluster (NCCL). Paddle's launcher already does what a job needs when a rank dies: it sends
SIGTERM to the other ranks of the node, kills them 3 s later and exits with the dead rank's code
(its ``--elastic_level`` default, -1, never restarts). This module relays rank 0's lines from its log
(``OUTPUT/logs/workerlog.0``) to the console (a progress bar on a terminal), keeps the launcher's
own output in ``OUTPUT/logs/launcher.log``, passes SIGTERM on to the launcher (which forwards it to the ranks:
they save a checkpoint and exit), and turns the outcome into one line.

A one-process job on one node does not go through the launcher: it runs in the calling process
(no rendezvous to set up, a couple of seconds faster to the first step, same code path otherwise).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from llama_train.console import Console

# Rank 0's lines meant for the user; Paddle's own chatter stays in the logs.
_OUR_LINE = re.compile(
    r"^(step \d+/|eval step |saved checkpoint |stopped by a signal|model FLOPs|Error: |dp\d+mp\d+pp\d+ on )"
)
_FAILED_CONTAINER = re.compile(r"Container rank (\d+) status failed .*? code (-?\d+)")


@dataclass
class JobResult:
    returncode: int
    failed_rank: int | None = None
    failed_code: int | None = None
    signalled: bool = False


def worker_command(config_path: str) -> list[str]:
    return [sys.executable, "-u", "-m", "llama_train.worker", config_path]


def launch_command(cfg, config_path: str) -> list[str]:
    logs = str(Path(cfg.output) / "logs")
    cmd = [
        sys.executable,
        "-m",
        "paddle.distributed.launch",
        "--nproc_per_node",
        str(cfg.procs_per_node),
        "--log_dir",
        logs,
    ]
    if cfg.nnodes > 1:
        cmd += ["--nnodes", str(cfg.nnodes), "--master", cfg.master]
        if cfg.node_rank is not None:
            cmd += ["--rank", str(cfg.node_rank)]
    return cmd + worker_command(config_path)


class _LogTail:
    """New lines of rank 0's log (the launcher's ``workerlog.0``, opened in append mode)."""

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


def run_launched(cfg, config_path: str, console: Console) -> JobResult:
    """Run the job through paddle.distributed.launch until every rank has exited."""
    logs = Path(cfg.output) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    result = JobResult(returncode=0)
    tail = _LogTail(logs / "workerlog.0")

    def relay() -> None:
        for text in tail.lines():
            if _OUR_LINE.match(text):
                console.line(text)

    with open(logs / "launcher.log", "a", encoding="utf-8") as launcher_log:
        proc = subprocess.Popen(
            launch_command(cfg, config_path),
            stdout=launcher_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches it only through us, once
        )

        def forward(signum, frame):
            result.signalled = True
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while proc.poll() is None:
                relay()
                time.sleep(0.2)
            relay()
            result.returncode = proc.returncode
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    failed = _FAILED_CONTAINER.search(
        (logs / "launcher.log").read_text(errors="replace")[-200_000:]
    )
    if failed:
        result.failed_rank, result.failed_code = int(failed.group(1)), int(failed.group(2))
    return result

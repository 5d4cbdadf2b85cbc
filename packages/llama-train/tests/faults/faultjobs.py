"""Running a job the way a user's terminal does, and finding every process it left.

A job's processes are found by the run id in their environment (``LLAMA_TRAIN_RUN_ID``, which
llama-train passes to the launcher and the ranks), never by name: Paddle's launcher and the ranks
run in sessions of their own, and a test must see exactly the processes of its job.
"""

import contextlib
import hashlib
import os
import subprocess
import time
import uuid
from pathlib import Path

from conftest import cli_command


def job_pids(run_id: str) -> list[int]:
    """Every live process whose environment carries this run id (zombies excluded)."""
    marker = f"LLAMA_TRAIN_RUN_ID={run_id}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in env and state not in (b"Z", b"X"):
            found.append(int(entry.name))
    return found


def wait_gone(run_id: str, seconds: float) -> list[int]:
    """The job's processes still alive after ``seconds`` (an empty list as soon as none is)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not job_pids(run_id):
            return []
        time.sleep(0.1)
    return job_pids(run_id)


def rank_pid(run_id: str, rank: int) -> int:
    for pid in job_pids(run_id):
        with open(f"/proc/{pid}/environ", "rb") as fh:
            if f"PADDLE_TRAINER_ID={rank}".encode() in fh.read().split(b"\0"):
                return pid
    raise AssertionError(f"no process of rank {rank} in run {run_id}")


def children(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as fh:
                    if int(fh.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        out.append(int(entry.name))
            except OSError:
                continue
    return out


class Job:
    """``llama-train`` started as from a terminal (its own session and process group)."""

    def __init__(self, args, run_id: str | None = None, env: dict | None = None):
        self.run_id = run_id or f"test-{uuid.uuid4().hex[:10]}"
        env = {**os.environ, **(env or {}), "LLAMA_TRAIN_RUN_ID": self.run_id}
        self.proc = subprocess.Popen(
            [*cli_command(), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: list[str] = []

    def wait_for(self, prefix: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith(prefix):
                return
            if time.monotonic() > deadline:
                break
        self.kill()
        err = self.proc.stderr.read()
        raise AssertionError(f"no line {prefix!r}: {''.join(self.lines)[-2000:]}{err[-2000:]}")

    def launcher_pid(self) -> int:
        """Paddle's launcher: the front process's child running llama_train.paddle_launch."""
        found = []
        for pid in children(self.proc.pid):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"llama_train.paddle_launch" in fh.read():
                    found.append(pid)
        assert len(found) == 1, found
        return found[0]

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            self.kill()
        return self.proc.returncode, "".join(self.lines) + (out or ""), err or ""

    def kill(self) -> None:
        for pid in job_pids(self.run_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) with the SHA-256 of its bytes."""
    digest = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            digest[str(path.relative_to(root)) + "/"] = ""
    return digest

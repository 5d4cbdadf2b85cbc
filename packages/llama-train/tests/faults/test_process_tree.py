"""No process of a job outlives it, a second job never joins a running one, and the rank blamed
for a crash is the one that failed first.

Each case starts a dp2 job (front process, Paddle's launcher, 2 ranks), lets it train a few steps
and then does to it what a user's environment does: kill -9 of the front process, of its process
group, of Paddle's launcher; SIGHUP (a dropped ssh session) or SIGTERM to one of them. Afterwards no
process carrying the job's run id may be alive 10 s later; a signal that asks for a stop must end
in a saved checkpoint and exit status 0.
"""

import json
import os
import signal

import pytest
from conftest import TINY, run_cli
from faultjobs import Job, job_pids, rank_pid, tree_digest, wait_gone

from llama_train import TrainerState

pytestmark = pytest.mark.dist

GONE_WITHIN_S = 10


def _saved_step(out) -> int:
    latest = (out / "checkpoints" / "latest").read_text().strip()
    return TrainerState.read(out / "checkpoints" / latest).step


@pytest.mark.parametrize("target", ["front", "front-group", "launcher"])
def test_kill_9_leaves_no_process(job_args, tmp_path, target):
    job = Job([*job_args, "--strategy", "dp2", "--output", tmp_path / "run"])
    try:
        job.wait_for("step 3/")
        assert len(job_pids(job.run_id)) == 4  # front, launcher, 2 ranks
        if target == "front":
            os.kill(job.proc.pid, signal.SIGKILL)
        elif target == "front-group":
            os.killpg(job.proc.pid, signal.SIGKILL)
        else:
            os.kill(job.launcher_pid(), signal.SIGKILL)
        assert wait_gone(job.run_id, GONE_WITHIN_S) == []
        code, _, err = job.finish()
        if target == "launcher":  # the front process lives to tell
            assert code == 1
            assert err.strip().splitlines() == [
                f"Error: Paddle's launcher was killed by signal 9; its ranks were stopped "
                f"(see {tmp_path / 'run' / 'logs' / 'launcher.log'})"
            ]
    finally:
        job.kill()


def test_sighup_saves_and_a_second_job_is_refused_meanwhile(job_args, tmp_path):
    """A dropped ssh session (SIGHUP to the front process) stops the job cleanly: checkpoint,
    exit 0, the resume hint. While it runs, a second job on the same --output is refused at once
    in one line naming the holder, and writes nothing."""
    out = tmp_path / "run"
    job = Job([*job_args, "--strategy", "dp2", "--output", out])
    try:
        job.wait_for("step 3/")
        before = tree_digest(out / "checkpoints") if (out / "checkpoints").exists() else {}
        run_config = (out / "run_config.json").read_bytes()
        second = run_cli([*job_args, "--strategy", "dp2", "--output", out, "--resume", "auto"])
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: {out} is in use by another"), lines
        assert f"pid {job.proc.pid} on " in lines[0]
        assert (out / "run_config.json").read_bytes() == run_config
        assert (
            tree_digest(out / "checkpoints") if (out / "checkpoints").exists() else {}
        ) == before

        os.kill(job.proc.pid, signal.SIGHUP)
        code, stdout, err = job.finish()
        assert code == 0, err[-3000:]
        assert "resume with --resume auto" in stdout
        assert _saved_step(out) >= 3
        assert wait_gone(job.run_id, GONE_WITHIN_S) == []
    finally:
        job.kill()


@pytest.mark.parametrize(
    "target, signum",
    [("launcher", signal.SIGTERM), ("launcher", signal.SIGHUP), ("every process", signal.SIGTERM)],
    ids=["launcher-term", "launcher-hup", "all-term"],
)
def test_stop_signal_to_the_launcher_or_all_saves_and_exits_0(job_args, tmp_path, target, signum):
    """Paddle's launcher forwards the stop to the ranks; llama-train used to report the launcher's
    own exit (code 15) as a crashed rank, and SIGHUP killed the launcher outright."""
    out = tmp_path / "run"
    job = Job([*job_args, "--strategy", "dp2", "--output", out])
    try:
        job.wait_for("step 3/")
        for pid in [job.launcher_pid()] if target == "launcher" else job_pids(job.run_id):
            os.kill(pid, signum)
        code, stdout, err = job.finish()
        assert code == 0, err[-3000:]
        assert err.strip() == ""
        step = _saved_step(out)
        assert f"stopped by a signal after step {step}; resume with --resume auto" in stdout
        assert wait_gone(job.run_id, GONE_WITHIN_S) == []
    finally:
        job.kill()


def test_the_first_rank_to_fail_is_blamed(job_args, tmp_path):
    """kill -9 of rank 3 under dp2mp2: its gloo peers abort a moment later, and Paddle's launcher
    used to report whichever of them it noticed first ("rank 2 was killed by signal 6")."""
    out = tmp_path / "run"
    job = Job([*job_args, "--strategy", "dp2mp2", "--output", out])
    try:
        job.wait_for("step 2/")
        os.kill(rank_pid(job.run_id, 3), signal.SIGKILL)
        code, _, err = job.finish()
        assert code == 1
        assert err.strip().splitlines() == [
            "Error: rank 3 was killed by signal 9; the job was stopped "
            f"(see {out / 'logs' / 'workerlog.3'})"
        ]
        assert wait_gone(job.run_id, GONE_WITHIN_S) == []
        # every rank logged under its global rank
        assert sorted(p.name for p in (out / "logs").glob("workerlog.*")) == [
            f"workerlog.{r}" for r in range(4)
        ]
    finally:
        job.kill()


def test_two_nodes_share_an_output(tiny_corpus, tmp_path):
    """Two one-process nodes on this machine with one shared --output: node 0 holds the lock,
    node 1 checks it (and waits for it: it starts first here); every rank logs under its global
    rank and each node's launcher under its node rank (Paddle names its logs by local rank, so
    both nodes used to write workerlog.0)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    args = [*TINY, "--data", tiny_corpus, "--output", out, "--strategy", "dp2", "--micro-batch-size", "2",
            "--max-steps", "3", "--save-every", "0", "--nnodes", "2", "--master", f"127.0.0.1:{port}"]  # fmt: skip
    node1 = Job([*args, "--node-rank", "1"])
    try:
        node0 = run_cli([*args, "--node-rank", "0"], timeout=240)
        code1, _, err1 = node1.finish(timeout=120)
        assert node0.returncode == 0 and code1 == 0, node0.stderr[-2000:] + err1[-2000:]
        logs = out / "logs"
        assert sorted(p.name for p in logs.glob("*log*") if p.is_file()) == [
            "launcher.node0.log", "launcher.node1.log", "workerlog.0", "workerlog.1"
        ]  # fmt: skip
        assert "step 3/3" in (logs / "workerlog.0").read_text()
        assert "step 3/3" not in (logs / "workerlog.1").read_text()  # rank 1 logs no steps
        assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000003"
        # node 1 took node 0's run id, so the exits of both nodes are compared
        ids = {json.loads((logs / f"exit.{r}.json").read_text())["run_id"] for r in (0, 1)}
        assert len(ids) == 1
    finally:
        node1.kill()


def test_the_rank_that_raised_is_blamed_not_the_peers_whose_connection_it_closed(
    job_args, tmp_path
):
    """pp4: rank 2 raises at step 3 (injected, ``LLAMA_TRAIN_FAULT_RAISE``) and its teardown
    outlasts its peers': they fail when its pipeline connections close ("pipeline peer rank 2:
    closed the connection") and exit first. By exits alone a peer was blamed (rank 1, 3 or 0
    from run to run); the line names rank 2 and its exception's line."""
    out = tmp_path / "run"
    job = Job([*job_args, "--strategy", "pp4", "--output", out],
              env={"LLAMA_TRAIN_FAULT_RAISE": "3:2"})  # fmt: skip
    try:
        code, _, err = job.finish(timeout=240)
        assert code == 1, err[-3000:]
        assert err.strip().splitlines() == [
            "Error: rank 2 failed: RuntimeError: injected failure at step 3 on rank 2; the job "
            f"was stopped (see {out / 'logs' / 'workerlog.2'})"
        ]
        reports = {p.name: json.loads(p.read_text()) for p in (out / "logs").glob("error.*")}
        assert reports["error.2"]["consequence"] is False
        peers = [r for name, r in reports.items() if name != "error.2"]
        assert peers and all(r["consequence"] for r in peers), reports
        assert any("pipeline peer rank 2" in r["message"] for r in peers), reports
        # its peers exited first: by exits alone, one of them would be blamed
        exits = {r: json.loads((out / "logs" / f"exit.{r}.json").read_text()) for r in range(4)}
        assert min(exits, key=lambda r: exits[r]["time"]) != 2, exits
        assert wait_gone(job.run_id, GONE_WITHIN_S) == []
    finally:
        job.kill()


def _probe(lock_path) -> str:
    """Another process's look at the lock, as node 1's check does: "True" if held."""
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from llama_train.runlock import _held_by; "
        "print(_held_by(Path(sys.argv[1]))[0])"
    )
    run = subprocess.run([sys.executable, "-c", code, str(lock_path)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.strip()


def test_a_probe_while_the_lock_turns_shared_never_sees_the_run_free(tmp_path, monkeypatch):
    """``publish`` turns the front's exclusive lock into a shared one. flock(2) converts by
    removing the lock and then taking the new one; the test gives flock exactly that documented
    behaviour and probes from another process in between, and before and after every lock call
    publish makes: the run is held every time. (With flock the probe between found the run free,
    and a second job could have taken it there.) After publish, a rank joins and a second job is
    refused."""
    import fcntl

    from llama_train import runlock
    from llama_train.errors import TrainError

    out = tmp_path / "run"
    out.mkdir()
    seen: list[str] = []
    publishing = False
    real_flock, real_fcntl = fcntl.flock, fcntl.fcntl

    def flock(fd, operation):
        if publishing and operation & fcntl.LOCK_SH:  # a conversion, as flock(2) describes it
            real_flock(fd, fcntl.LOCK_UN)
            seen.append(_probe(out / ".lock"))
        return real_flock(fd, operation)

    def fcntl_call(fd, command, *args):
        if publishing:
            seen.append(_probe(out / ".lock"))
        answer = real_fcntl(fd, command, *args)
        if publishing:
            seen.append(_probe(out / ".lock"))
        return answer

    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(fcntl, "fcntl", fcntl_call)
    lock = runlock.RunLock(out)
    lock.acquire()
    try:
        assert _probe(out / ".lock") == "True"
        publishing = True
        lock.publish("run-1", None)
        publishing = False
        assert seen and set(seen) == {"True"}, seen
        rank_fd = runlock.join_as_rank(str(out))
        assert rank_fd is not None
        with pytest.raises(TrainError, match="is in use by another llama-train job"):
            runlock.RunLock(out).acquire()
        assert _probe(out / ".lock") == "True"
        import os

        os.close(rank_fd)
    finally:
        lock.release()
    assert _probe(out / ".lock") == "False"

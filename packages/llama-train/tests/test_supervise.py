"""Which rank is blamed: the first to fail by time; within one 50 ms poll, a killed rank before the
peers that aborted because of it; an exit whose status was never seen is not a failure."""

import json

import pytest

from llama_train.supervise import RankExit, first_failure


def test_first_failure_orders_by_time_then_cause(tmp_path):
    run = "r1"
    exits = [
        RankExit(2, 12, "a", 100.00, -6, run),  # a gloo peer aborting, seen in the same poll
        RankExit(3, 13, "a", 100.00, -9, run),  # the rank that was killed
        RankExit(0, 10, "a", 100.30, 1, run),
        RankExit(1, 11, "a", 99.00, None, run),  # reaped before seen: status unknown
    ]
    assert first_failure(tmp_path, run, exits).rank == 3
    # Another node's record (shared logs), earlier still, wins; a stale run's record is ignored.
    other = RankExit(5, 20, "b", 99.50, 2, run)
    (tmp_path / "exit.5.json").write_text(json.dumps(other.__dict__))
    stale = RankExit(6, 21, "b", 1.0, -9, "old-run")
    (tmp_path / "exit.6.json").write_text(json.dumps(stale.__dict__))
    assert first_failure(tmp_path, run, exits).rank == 5
    assert first_failure(tmp_path, run, [exits[3]]).rank == 5
    (tmp_path / "exit.5.json").unlink()
    assert first_failure(tmp_path, run, [exits[3], RankExit(0, 10, "a", 98.0, 0, run)]) is None
    # A peer's abort can be seen a poll or two before the killed rank it follows (its teardown is
    # longer): within CONSEQUENCE_LAG_S the killed rank is still the one blamed, beyond it not.
    aborted, killed = RankExit(2, 12, "a", 100.00, -6, run), RankExit(3, 13, "a", 100.40, -9, run)
    assert first_failure(tmp_path / "none", run, [aborted, killed]).rank == 3
    killed.time = 102.0
    assert first_failure(tmp_path / "none", run, [aborted, killed]).rank == 2
    assert RankExit(3, 13, "a", 1.0, -9).describe() == "was killed by signal 9"
    assert RankExit(3, 13, "a", 1.0, 2).describe() == "exited with code 2"


def test_the_parent_records_an_exit_the_moment_it_happens(tmp_path):
    """``record_exit`` reads a child's status without reaping it: the record holds the signal and
    the time of death even though the child is reaped a second later (as Paddle's launcher does),
    and the reaper still gets the status. The record outranks the front's view of that rank
    (which saw it only after it was reaped: status None)."""
    import subprocess
    import sys
    import time

    from llama_train.supervise import record_exit

    run = "r2"
    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    record_exit(failed.pid, 1, run, tmp_path).join(timeout=30)
    time.sleep(0.2)
    killed = subprocess.Popen(
        [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    )
    record_exit(killed.pid, 3, run, tmp_path).join(timeout=30)
    time.sleep(1.0)
    reaped_at = time.time()
    assert killed.wait() == -9 and failed.wait() == 3
    records = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("exit.*.json")}
    assert {name: r["status"] for name, r in records.items()} == {
        "exit.3.json": -9,
        "exit.1.json": 3,
    }
    assert reaped_at - records["exit.3.json"]["time"] >= 1.0
    front_view = [RankExit(3, killed.pid, "a", reaped_at, None, run)]
    blamed = first_failure(tmp_path, run, front_view)
    assert (blamed.rank, blamed.status) == (1, 3)  # it died first
    records["exit.1.json"]["time"] += 1.0
    (tmp_path / "exit.1.json").write_text(json.dumps(records["exit.1.json"]))
    blamed = first_failure(tmp_path, run, front_view)
    assert (blamed.rank, blamed.status) == (3, -9)
    # the front writes only what the launcher did not record
    from llama_train.supervise import RankWatch

    watch = RankWatch(0, run, 2)
    watch.exits = {3: front_view[0], 0: RankExit(0, 1, "a", reaped_at, 0, run)}
    watch.write_records(tmp_path)
    assert json.loads((tmp_path / "exit.3.json").read_text())["status"] == -9
    assert json.loads((tmp_path / "exit.0.json").read_text())["status"] == 0


def _report(tmp_path, rank, code, message, when, consequence, run="r3"):
    from llama_train.supervise import RankReport, write_report

    assert write_report(tmp_path, RankReport(rank, code, message, when, consequence, run))


def test_the_rank_that_raised_is_blamed_over_its_peers_that_exited_first(tmp_path):
    """pp4, rank 2 raises at t=100.00 and its teardown lasts (its exit at 104.5, killed by the
    launcher); its peers fail when its connections close and exit first. By exits alone rank 1
    would be blamed; the ranks' own reports name rank 2 and its line. A peer's report saying
    that a peer went away comes after any other failure, even an earlier one."""
    from llama_train.supervise import first_failure, read_reports

    run = "r3"
    exits = [
        RankExit(0, 10, "a", 100.62, 1, run),
        RankExit(1, 11, "a", 100.35, 1, run),
        RankExit(2, 12, "a", 104.50, -9, run),
        RankExit(3, 13, "a", 100.61, 1, run),
    ]
    assert first_failure(tmp_path, run, exits).rank == 1  # no reports: the earliest exit
    closed = "P2PError: pipeline peer rank {}: closed the connection"
    _report(tmp_path, 2, 1, "RuntimeError: injected failure at step 3 on rank 2", 100.00, False)
    _report(tmp_path, 1, 1, closed.format(2), 100.01, True)
    _report(tmp_path, 3, 1, closed.format(2), 100.02, True)
    _report(tmp_path, 0, 1, closed.format(1), 100.30, True)
    blamed = first_failure(tmp_path, run, exits)
    assert (blamed.rank, blamed.status) == (2, -9)
    report = read_reports(tmp_path, run)[2]
    assert (report.code, report.message, report.consequence) == (
        1, "RuntimeError: injected failure at step 3 on rank 2", False
    )  # fmt: skip
    # even reported earlier than the raise (clocks of two nodes), a consequence comes after
    _report(tmp_path, 1, 1, closed.format(2), 99.00, True)
    assert first_failure(tmp_path, run, exits).rank == 2
    # only consequences: the first of them
    (tmp_path / "error.2").unlink()
    assert first_failure(tmp_path, run, exits[:2] + exits[3:]).rank == 1
    # a report of another run is not read
    _report(tmp_path, 2, 1, "RuntimeError: old", 1.0, False, run="old-run")
    assert 2 not in read_reports(tmp_path, run)


def test_a_killed_rank_keeps_the_blame_over_a_peer_that_lost_its_connection(tmp_path):
    """kill -9 of rank 3: rank 2's socket read fails (ECONNRESET) 30 ms earlier than rank 3's exit
    is seen (its teardown). Rank 2's report is a consequence (exit 1, not "cannot write"): rank 3
    is blamed, and the front's line for it is built from its exit. A report that does not say a
    peer went away, 1 ms before the kill is seen (as a gloo TIMEOUT was in CI), does not take the
    blame either; one a second earlier does."""
    from llama_train import cli
    from llama_train.launcher import JobResult
    from llama_train.supervise import first_failure, read_reports

    run = "r4"
    exits = [RankExit(3, 13, "a", 100.05, -9, run), RankExit(2, 12, "a", 100.30, 1, run)]
    _report(tmp_path, 2, 1, "network connection failed: Connection reset by peer", 100.02, True,
            run=run)  # fmt: skip
    blamed = first_failure(tmp_path, run, exits)
    assert blamed.rank == 3
    result = JobResult(1, blamed, report=read_reports(tmp_path, run).get(blamed.rank))
    line = cli.failure_line(result, tmp_path)
    assert (line.message, line.exit_code) == (
        f"rank 3 was killed by signal 9; the job was stopped (see {tmp_path / 'workerlog.3'})", 1
    )  # fmt: skip
    _report(tmp_path, 2, 1, "RuntimeError: an error not known as a peer's", 100.04, False,
            run=run)  # fmt: skip
    assert first_failure(tmp_path, run, exits).rank == 3
    # had rank 2 failed for its own reason (a full disk: exit 2) a second before, its line it is
    _report(tmp_path, 2, 2, "cannot write /out/metrics.jsonl: No space left on device", 99.00,
            False, run=run)  # fmt: skip
    blamed = first_failure(tmp_path, run, exits)
    result = JobResult(1, blamed, report=read_reports(tmp_path, run).get(blamed.rank))
    line = cli.failure_line(result, tmp_path)
    assert (line.message, line.exit_code) == (
        "cannot write /out/metrics.jsonl: No space left on device", 2
    )  # fmt: skip


def test_the_orphan_grace_follows_the_measured_save_time(tmp_path):
    """max(5 s, step + 2 × save + 5 s) from rank 0's last record; 5 s without one (or a bad
    one)."""
    from llama_train.supervise import orphan_grace, write_timing

    assert orphan_grace(tmp_path) == 5.0
    write_timing(tmp_path, save_s=0.2, step_s=0.1, step=2)
    assert orphan_grace(tmp_path) == pytest.approx(5.5)
    write_timing(tmp_path, save_s=40.0, step_s=12.0, step=1000)
    assert orphan_grace(tmp_path) == pytest.approx(97.0)
    (tmp_path / "timing.json").write_text('{"save_s": NaN, "step_s": 1}')
    assert orphan_grace(tmp_path) == 5.0


def test_the_launchers_watchdog_waits_the_grace_measured_when_the_front_is_gone(tmp_path):
    """A process whose parent exits: ``watch_parent`` asks for the grace once the parent is gone
    (here a save of 1 s and a step of 0.5 s were recorded after it started watching: 7.5 s), then
    calls ``on_gone``; a fixed 5 s grace would end it 2.5 s early."""
    import subprocess
    import sys
    import time

    logs = tmp_path / "logs"
    logs.mkdir()
    child = (
        "import os, sys, time; from pathlib import Path; from llama_train import supervise\n"
        "logs = Path(sys.argv[1])\n"
        "def gone():\n"
        "    (logs / 'gone').write_text(repr(time.time())); os._exit(0)\n"
        "supervise.watch_parent(os.getppid(), lambda: supervise.orphan_grace(logs), gone)\n"
        "(logs / 'watching').write_text('1')\n"
        "time.sleep(60)\n"
    )
    parent = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]])\n"
        "time.sleep(float(sys.argv[3]))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent, child, str(logs), "3"])
    deadline = time.monotonic() + 20
    while not (logs / "watching").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    from llama_train.supervise import write_timing

    write_timing(logs, save_s=1.0, step_s=0.5, step=7)
    proc.wait(timeout=30)
    parent_gone = time.time()
    while not (logs / "gone").exists() and time.monotonic() < deadline + 15:
        time.sleep(0.05)
    waited = float((logs / "gone").read_text()) - parent_gone
    assert 7.5 - 0.5 <= waited <= 7.5 + 1.0, waited

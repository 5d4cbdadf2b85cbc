"""Which rank is blamed: the first to fail by time; within one 50 ms poll, a killed rank before the
peers that aborted because of it; an exit whose status was never seen is not a failure."""

import json

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

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

"""Rollback, safe resume, and refusals that leave the run directory as they found it.

A resume is checked in the front process before any rank starts: the checkpoint's model config
and data order against the options, and every rank file through llama-ckpt-tools' restricted
unpickler (a pickle that would run code is refused without running it). A refused start writes
nothing: the run directory's files hash the same before and after.
"""

import json
import pickle
import shutil

import pytest
from conftest import TINY, losses, run_cli
from faultjobs import tree_digest

from llama_train import TrainerState

BASE = ["--micro-batch-size", "4", "--max-steps", "4", "--save-every", "2"]


@pytest.fixture(scope="module")
def finished_run(tiny_corpus, tmp_path_factory):
    """4 steps in one process, checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = run_cli([*TINY, *BASE, "--data", tiny_corpus, "--output", out])
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _refused(result) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    return lines[0]


@pytest.mark.parametrize("victim", ["0_0.distcp", "0.metadata"])
def test_a_hostile_rank_file_is_refused_before_launch(run_copy, tiny_corpus, tmp_path, victim):
    """The resume asks for dp2 (a launch of two ranks): the refusal comes from the front process,
    before any launch, the code in the pickle never runs, and nothing in the run dir changes."""
    marker = tmp_path / "MARKER"
    step = run_copy / "checkpoints" / "step-00000004"
    (step / victim).write_bytes(pickle.dumps(_RunsCode(marker)))
    before = tree_digest(run_copy)
    result = run_cli([*TINY, *BASE, "--data", tiny_corpus, "--output", run_copy, "--resume", "auto",
                      "--max-steps", "6", "--strategy", "dp2", "--micro-batch-size", "2"])  # fmt: skip
    line = _refused(result)
    assert f"{step / victim} is not a plain checkpoint file" in line
    assert not marker.exists()
    assert tree_digest(run_copy) == before
    assert not (run_copy / "logs" / "paddle").exists()  # no launch


def test_a_truncated_rank_file_is_refused_before_launch(run_copy, tiny_corpus):
    victim = run_copy / "checkpoints" / "step-00000004" / "0_0.distcp"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    before = tree_digest(run_copy)
    result = run_cli([*TINY, *BASE, "--data", tiny_corpus, "--output", run_copy, "--resume", "auto",
                      "--max-steps", "6", "--strategy", "dp2", "--micro-batch-size", "2"])  # fmt: skip
    line = _refused(result)
    assert f"{victim}: file is truncated" in line
    assert tree_digest(run_copy) == before


def test_resume_under_another_model_config_changes_nothing(run_copy, tiny_corpus, tmp_path):
    """It used to rewrite run_config.json and config.json before a rank refused the resume."""
    config = json.loads((run_copy / "config.json").read_text())
    config["num_hidden_layers"] = 2
    (tmp_path / "other.json").write_text(json.dumps(config))
    before = tree_digest(run_copy)
    args = [a if a != "tiny" else str(tmp_path / "other.json") for a in TINY]
    result = run_cli([*args, *BASE, "--data", tiny_corpus, "--output", run_copy, "--resume", "auto",
                      "--max-steps", "6", "--strategy", "dp2", "--micro-batch-size", "2"])  # fmt: skip
    line = _refused(result)
    assert "the checkpoint's model config differs from --model-config" in line
    assert "(num_hidden_layers: checkpoint 4, asked 2)" in line
    assert tree_digest(run_copy) == before
    assert not (run_copy / "logs" / "paddle").exists()


def test_resume_auto_without_a_valid_latest_is_refused(run_copy, tiny_corpus):
    """A crash before a timeline's first ``latest`` (or a lost one) must not start the run over
    from step 0 beside its checkpoints, dropping its metrics."""
    (run_copy / "checkpoints" / "latest").unlink()
    before = tree_digest(run_copy)
    result = run_cli(
        [*TINY, *BASE, "--data", tiny_corpus, "--output", run_copy, "--resume", "auto"]
    )
    line = _refused(result)
    assert "holds checkpoints but no valid 'latest'" in line
    assert line.endswith(f"(the newest is {run_copy / 'checkpoints' / 'step-00000004'})")
    assert tree_digest(run_copy) == before


def test_rollback_abandons_the_newer_checkpoints(tiny_corpus, tmp_path):
    """Saved every 2 steps to step 10, then resumed from step 8 with another learning rate and
    saves every step: step 10 is the new timeline's (its loss is the resumed run's, not the old
    one), the old step 10 is kept under checkpoints/abandoned-*/, and ``latest`` names step 10.
    Then a crash between publishing step 10 and updating ``latest`` (``latest`` set back to step
    9) plus a partial save left behind: --resume auto continues from step 9, the orphaned step 10
    moves aside and the partial save is removed."""
    out = tmp_path / "run"
    common = [*TINY, "--data", tiny_corpus, "--output", out, "--micro-batch-size", "4",
              "--max-steps", "10", "--keep-last", "0"]  # fmt: skip
    first = run_cli([*common, "--save-every", "2"])
    assert first.returncode == 0, first.stderr[-3000:]
    ckpts = out / "checkpoints"
    old_10 = TrainerState.read(ckpts / "step-00000010").loss

    second = run_cli([*common, "--save-every", "1", "--lr", "1e-3",
                      "--resume", str(ckpts / "step-00000008")])  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    (abandoned,) = ckpts.glob("abandoned-*")
    assert f"the newer ones were moved to {abandoned}" in second.stdout
    assert sorted(p.name for p in abandoned.iterdir()) == ["step-00000010"]
    assert TrainerState.read(abandoned / "step-00000010").loss == old_10
    new_10 = TrainerState.read(ckpts / "step-00000010").loss
    assert new_10 == losses(out)[10] and new_10 != old_10
    assert (ckpts / "latest").read_text().strip() == "step-00000010"

    shutil.rmtree(abandoned)
    (ckpts / "latest").write_text("step-00000009\n")
    (ckpts / "step-00000011.tmp").mkdir()
    (ckpts / "step-00000011.tmp" / "0_0.distcp").write_bytes(b"partial")
    third = run_cli([*common, "--save-every", "1", "--lr", "1e-3", "--resume", "auto"])
    assert third.returncode == 0, third.stderr[-3000:]
    assert "at step 9" in third.stdout
    assert "removed 1 partial checkpoint save(s)" in third.stdout
    (aside,) = ckpts.glob("abandoned-*")
    assert TrainerState.read(aside / "step-00000010").loss == new_10
    assert not list(ckpts.glob("*.tmp"))
    assert (ckpts / "latest").read_text().strip() == "step-00000010"
    resaved = TrainerState.read(ckpts / "step-00000010")
    assert resaved.loss == losses(out)[10]
    assert resaved.saved_at > TrainerState.read(aside / "step-00000010").saved_at  # not skipped


def test_each_save_records_its_time_for_the_orphan_grace(finished_run):
    """Rank 0 records the time of each save and of the step before it in logs/timing.json (the
    last save, step 4, here); the launcher's watchdog gives a stop max(5 s, step + 2 × save + 5 s)
    once the front process is gone."""
    from llama_train.supervise import orphan_grace

    record = json.loads((finished_run / "logs" / "timing.json").read_text())
    assert record["step"] == 4 and record["save_s"] > 0 and record["step_s"] > 0
    expected = max(5.0, record["step_s"] + 2 * record["save_s"] + 5.0)
    assert orphan_grace(finished_run / "logs") == pytest.approx(expected)

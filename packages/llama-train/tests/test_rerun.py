"""A run is one file: ``--config OUTPUT/run_config.json`` and ``--print-config``'s output start the
same job again, to the same losses bit for bit; an old run directory (run_config.json of format 1,
the flat form) still reruns and resumes."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import TINY, losses, run_cli

from llama_train.config_file import tomllib

# Two steps of the tiny preset; the schedule's end is fixed so that a run stopped at step 2 and
# resumed to step 3 follows the schedule of an uninterrupted 3-step run.
STEPS = ["--micro-batch-size", "2", "--max-steps", "2", "--decay-steps", "4", "--seed", "11"]


def _train(args, out, timeout=300):
    result = run_cli([*args, "--output", out], timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _options(out) -> dict:
    record = json.loads((out / "run_config.json").read_text())
    assert record["format"] == 2
    return {k: v for k, v in record.items() if k not in ("format", "resolved", "job")}


@pytest.fixture(scope="module")
def reference(tiny_corpus, tmp_path_factory):
    """One process, 2 steps, from flags."""
    out = tmp_path_factory.mktemp("reference") / "run"
    args = [*TINY, "--data", tiny_corpus, *STEPS]
    _train(args, out)
    return args, out


@pytest.mark.parametrize("strategy", ["dp1", pytest.param("dp2", marks=pytest.mark.dist)])
def test_run_config_reruns_the_job_to_the_same_losses(reference, tiny_corpus, tmp_path, strategy):
    args, first = reference
    if strategy != "dp1":
        first = tmp_path / "first"
        _train([*args, "--strategy", strategy, "--global-batch-size", "4"], first)
    again = tmp_path / "again"
    _train(["--config", first / "run_config.json"], again)
    assert sorted(losses(again)) == [1, 2]
    assert losses(again) == losses(first)  # exactly
    assert _options(again) == _options(first)
    record = json.loads((again / "run_config.json").read_text())
    assert record["job"]["output"] == str(again)
    assert record["resolved"]["parallel"]["dp"] == int(strategy[2])
    assert record["resolved"]["seq_len"] == 32 and record["resolved"]["resume"] is None


def test_print_config_round_trip_gives_the_same_losses(reference, tmp_path):
    args, first = reference
    out = tmp_path / "printed-run"
    result = run_cli([*args, "--output", out, "--print-config"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert not out.exists()  # it trains nothing and writes nothing
    printed = tomllib.loads(result.stdout)
    assert printed["job"]["output"] == str(out)
    assert printed["resolved"]["seq_len"] == 32
    (tmp_path / "run.toml").write_text(result.stdout)
    # given back alone: the output is in the file
    _train(["--config", tmp_path / "run.toml"], out)
    assert losses(out) == losses(first)
    assert _options(out) == _options(first)


def _as_format_1(out) -> None:
    """Rewrite OUTPUT/run_config.json as llama-train 0.2 wrote it: every option at the top level
    (seq_len and grad_accum filled in, resume the checkpoint resumed), the Strategy as "parallel",
    the init weights as "init_source", "format": 1."""
    record = json.loads((out / "run_config.json").read_text())
    flat = {"format": 1}
    for section, values in record.items():
        if section not in ("format", "resolved"):
            flat.update(values)
    resolved = record["resolved"]
    flat.update(seq_len=resolved["seq_len"], grad_accum=resolved["parallel"]["micro_batches"],
                resume=resolved["resume"], parallel=resolved["parallel"],
                init_source=resolved["init_source"])  # fmt: skip
    (out / "run_config.json").write_text(json.dumps(flat, indent=2) + "\n")


def test_an_old_run_directory_reruns_and_resumes(reference, tiny_corpus, tmp_path):
    args, first = reference
    old = tmp_path / "old"
    shutil.copytree(first, old)
    record = json.loads((old / "run_config.json").read_text())
    record["job"]["output"] = str(old)
    (old / "run_config.json").write_text(json.dumps(record))
    _as_format_1(old)

    # rerun into a new directory: the flat form is read, with one note line showing it sectioned
    again = tmp_path / "again"
    result = _train(["--config", old / "run_config.json"], again)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "uses the flat form; the sectioned form is: [job]" in notes[0]
    assert "[parallel] strategy = " in notes[0] and "[resolved]" not in notes[0]
    assert losses(again) == losses(first)

    # resume the old directory one step further: the steps of an uninterrupted 3-step run
    longer = tmp_path / "longer"
    _train([*args, "--max-steps", "3"], longer)
    _train(["--config", old / "run_config.json", "--resume", "auto", "--max-steps", "3"], old)
    assert sorted(losses(old)) == [1, 2, 3]
    assert losses(old) == losses(longer)
    resolved = json.loads((old / "run_config.json").read_text())["resolved"]  # rewritten: format 2
    assert resolved["resume"] == str((old / "checkpoints" / "step-00000002").resolve())

"""What a run shows of itself: every record in TensorBoard, W&B (offline) and VisualDL as in
metrics.jsonl, a profiler trace of the steps asked for, per-rank memory, the state's size."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY, run_cli

from llama_model import preset
from llama_train import read_metrics
from llama_train.cli import main

OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def _train(tiny_corpus, out, *extra, env=None):
    args = [*TINY, "--data", tiny_corpus, "--output", out, "--micro-batch-size", "2",
            "--max-steps", "3", *extra]  # fmt: skip
    result = run_cli(args, timeout=400, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _tensorboard(directory) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def _wandb_records(directory):
    """The records of an offline W&B run file: a LevelDB-style log (32 KiB blocks of records with a
    7-byte header: crc32c, length, kind) after a 7-byte ':W&B' header, each a protobuf Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(directory).glob("wandb/offline-run-*/run-*.wandb")
    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    pos, chunks, records = 7, b"", []
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        pos += 7
        if length == 0 and kind == 0:  # zero padding to the end of the block
            pos += left - 7
            continue
        chunks += raw[pos : pos + length]
        pos += length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def test_trackers_profile_and_memory_of_one_run(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    result = _train(tiny_corpus, out, "--eval-every", "3", "--eval-iters", "1",
                    "--report-to", "jsonl,tensorboard,wandb,visualdl", "--profile-steps", "2-3",
                    env=OFFLINE)  # fmt: skip
    records = read_metrics(str(out))
    train = {r["step"]: r for r in records if r["split"] == "train"}
    valid = [r for r in records if r["split"] == "valid"]
    assert sorted(train) == [1, 2, 3] and len(valid) == 1

    # TensorBoard: every number of every record, at its step (stored as float32).
    scalars = _tensorboard(out / "tensorboard")
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "peak_memory_gib"):
        want = [(k, np.float32(train[k][key])) for k in (1, 2, 3)]
        assert [(s, np.float32(v)) for s, v in scalars[f"train/{key}"]] == want, key
    assert scalars["valid/valid_loss"] == [(3, pytest.approx(valid[0]["valid_loss"], rel=1e-6))]

    # W&B, offline: the run's options as its config, and the same history.
    records_wb = _wandb_records(out)
    (run,) = [r.run for r in records_wb if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["strategy"] == "dp1"
    assert config["report_to"] == "jsonl,tensorboard,wandb,visualdl"
    history = [
        {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in records_wb
        if r.WhichOneof("record_type") == "history"
    ]
    losses = [(h["_step"], h["train/loss"]) for h in history if "train/loss" in h]
    assert losses == [(k, train[k]["loss"]) for k in (1, 2, 3)]
    assert (out / "wandb" / "run-id").read_text().strip() == run.run_id

    # VisualDL: the same curves.
    from visualdl import LogReader

    (log,) = (out / "visualdl").glob("vdlrecords.*")
    reader = LogReader(file_path=str(log))
    assert "hparam" in reader.get_tags()["hyper_parameters"]
    got = [(e.id, e.value) for e in reader.get_data("scalar", "train/loss")]
    assert got == [(k, pytest.approx(train[k]["loss"], rel=1e-6)) for k in (1, 2, 3)]

    # The profiler: a Chrome trace of steps 2-3 with the model's forward and backward operators.
    (trace,) = (out / "profile" / "step-2-3" / "rank-0").glob("*.json")
    names = {event.get("name", "") for event in json.loads(trace.read_text())["traceEvents"]}
    assert any(n.startswith("matmul") and "grad" not in n for n in names), sorted(names)[:50]
    assert any(n.startswith("matmul_grad") for n in names)
    assert "profile: steps 2-3" in result.stdout
    summary = (out / "profile" / "step-2-3" / "summary.txt").read_text()
    assert "matmul dygraph" in summary and "MatmulGradNode" in summary

    # Memory: the process's peak RSS (Paddle alone is over 100 MiB), per rank; the state's size.
    for record in train.values():
        assert record["peak_memory_kind"] == "process rss"
        assert record["peak_memory_gib_per_rank"] == [
            pytest.approx(record["peak_memory_gib"], abs=1e-4)
        ]
        assert 0.1 < record["peak_memory_gib"] < 8
    n = preset("tiny", vocab_size=384).num_parameters()
    assert (
        f"parameters {n * 4 / 1024**3:.3f} GiB, AdamW state {n * 8 / 1024**3:.3f} GiB"
        in result.stdout
    )


@pytest.mark.dist
def test_two_ranks_profile_and_report_memory(tiny_corpus, tmp_path):
    out = tmp_path / "dp2"
    _train(tiny_corpus, out, "--strategy", "dp2", "--max-steps", "2", "--eval-every", "0",
           "--report-to", "tensorboard", "--profile-steps", "2-2")  # fmt: skip
    for rank in (0, 1):
        assert list((out / "profile" / "step-2-2" / f"rank-{rank}").glob("*.json"))
    last = read_metrics(str(out))[-1]
    assert len(last["peak_memory_gib_per_rank"]) == 2
    # The run's one Strategy, as every rank read it; rank 0's lines as the launcher relayed them.
    parallel = json.loads((out / "run_config.json").read_text())["resolved"]["parallel"]
    assert (parallel["dp"], parallel["mp"], parallel["pp"], parallel["micro_batches"]) == (
        2,
        1,
        1,
        1,
    )
    events = [
        json.loads(line)["text"]
        for line in (out / "logs" / "events.jsonl").read_text().splitlines()
    ]
    assert events[0].startswith("dp2mp1pp1 on 2 process(es)") and any(
        e.startswith("step 2/2") for e in events
    )
    assert last["peak_memory_gib"] == pytest.approx(max(last["peak_memory_gib_per_rank"]), abs=1e-4)
    assert sorted(s for s, _ in _tensorboard(out / "tensorboard")["train/loss"]) == [1, 2]


def test_report_to_and_profile_refusals(tiny_corpus, tmp_path, monkeypatch):
    base = [*TINY, "--data", tiny_corpus, "--output", tmp_path / "out", "--max-steps", "3"]

    def refused(*extra):
        result = CliRunner().invoke(main, [str(a) for a in [*base, *extra]])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert not (tmp_path / "out").exists()
        return lines[0]

    assert refused("--report-to", "jsonl,mlflow") == (
        "Error: --report-to: unknown sink 'mlflow' (known: jsonl, tensorboard, wandb, visualdl)"
    )
    assert "--profile-steps must be A-B with 1 ≤ A ≤ B" in refused("--profile-steps", "3-1")
    assert "ends after --max-steps 3" in refused("--profile-steps", "2-5")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    assert refused("--report-to", "wandb") == (
        "Error: --report-to wandb needs the wandb package: pip install 'llama-train[wandb]'"
    )


def test_heartbeat_speaks_only_for_long_work():
    import time

    from llama_train.progress import heartbeat

    lines = []
    with heartbeat("quick", lines.append, after=5.0):
        pass
    assert lines == []
    with heartbeat("slow work", lines.append, after=0.05, every=0.3):
        time.sleep(1.0)
    assert lines[0] == "progress: slow work... 0 s"
    assert 2 <= len(lines) <= 6 and lines[-1].startswith("progress: slow work: done in 1.")


def test_the_kernels_line_says_llama_ops_is_switched_off(tiny_corpus, tmp_path):
    """With LLAMA_MODEL_NO_OPS=1 the primitives are plain Paddle because they were switched off,
    installed or not; the line used to say "llama-ops not installed"."""
    result = _train(tiny_corpus, tmp_path / "run", "--max-steps", "2", "--save-every", "0",
                    env={"LLAMA_MODEL_NO_OPS": "1"})  # fmt: skip
    kernels = [line for line in result.stdout.splitlines() if line.startswith("kernels: ")]
    assert kernels == ["kernels: plain Paddle (llama-ops switched off by LLAMA_MODEL_NO_OPS)"]

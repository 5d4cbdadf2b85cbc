"""``llama-train plan --check``: train the layout here and compare what each rank holds with the plan.

The job runs as any job does: ``llama-train run`` (Paddle's launcher and one process per rank when
the layout has more than one) on a corpus of random token ids written for it, for
``measure.MEASURED_RUN`` steps, with ``LLAMA_TRAIN_RECORD_MEMORY`` set, so each rank writes what
it held in its measured step (``measure.py``). Every option of the plan is the run's, but the job
itself: no --init-from, no resume, no evaluation, one tracker, a temporary output.

Budget: the parameter, gradient and optimizer bytes of every rank within 1 % of the plan, and the
activation bytes saved for backward per micro-batch within 10 %. The exit code says whether every
rank is within it (0) or not (1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from llama_train import toml_writer
from llama_train.errors import TrainError
from llama_train.plan.devices import GIB
from llama_train.plan.estimate import Plan, make_plan
from llama_train.plan.measure import MEASURED_RUN, RECORD_MEMORY_ENV

BUDGET = {"parameters": 0.01, "gradients": 0.01, "optimizer": 0.01, "activations": 0.10}
RUN_TIMEOUT_S = 1800
DOCUMENTS = 64


def run_check(cfg, job, model_name: str, as_json: bool, echo) -> int:
    if cfg.training.to_static:
        raise TrainError("--check measures the eager step: leave --to-static out")
    plan = make_plan(job)
    if not plan.fits:
        stage = plan.largest_rank
        raise TrainError(
            f"--check trains the layout on this machine, and it does not fit here: each rank "
            f"needs up to {stage.total / GIB:.2f} GiB, this machine gives each of its "
            f"{job.strategy.world_size} ranks {stage.budget / GIB:.2f} GiB; check a smaller "
            "model, batch or sequence"
        )
    with tempfile.TemporaryDirectory(prefix="llama-train-check-") as tmp:
        measured = _measure(cfg, job, Path(tmp))
    rows = compare(plan, measured)
    ok = all(row["within_budget"] for row in rows)
    if as_json:
        echo(json.dumps({"model": model_name, "strategy": str(job.strategy),
                         "budget": BUDGET, "within_budget": ok, "ranks": rows}, indent=2))  # fmt: skip
    else:
        for line in check_lines(plan, rows, model_name, ok):
            echo(line)
    return 0 if ok else 1


def _measure(cfg, job, tmp: Path) -> list[dict]:
    corpus = tmp / "corpus"
    write_corpus(corpus, job.config.vocab_size, job.global_batch, job.seq_len)
    config_file = tmp / "check.toml"
    config_file.write_text(toml_writer.dumps(_check_options(cfg, tmp / "run", corpus)))
    records = tmp / "measured"
    env = dict(os.environ, **{RECORD_MEMORY_ENV: str(records)})
    command = [sys.executable, "-m", "llama_train", "run", "--config", str(config_file)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise TrainError(f"--check: the run took more than {RUN_TIMEOUT_S} s") from None
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        why = errors[-1].removeprefix("Error: ") if errors else f"exit code {done.returncode}"
        raise TrainError(f"--check: the run failed: {why}")
    files = sorted(records.glob("rank-*.json"))
    if len(files) != job.strategy.world_size:
        raise TrainError(
            f"--check: {len(files)} of {job.strategy.world_size} ranks recorded what they held"
        )
    return [json.loads(path.read_text()) for path in files]


def write_corpus(prefix: Path, vocab_size: int, global_batch: int, seq_len: int) -> None:
    """Random token ids, enough for the measured steps (the train split is 94.9 % of the
    documents, each sample seq_len + 1 tokens), in ``DOCUMENTS`` documents."""
    from llama_data import IndexedDatasetWriter, best_dtype

    tokens = 4 * (MEASURED_RUN * global_batch + 2) * (seq_len + 1)
    per_document = -(-tokens // DOCUMENTS) + seq_len + 1
    rng = np.random.default_rng(0)
    writer = IndexedDatasetWriter(str(prefix), best_dtype(vocab_size))
    for _ in range(DOCUMENTS):
        writer.add_document(rng.integers(0, vocab_size, per_document))
    writer.close()


def _check_options(cfg, output: Path, corpus: Path) -> dict:
    """The plan's options as a config file, the job made a measurement: see the module docstring."""
    sections = cfg.sections()
    overrides = {
        "job": {"output": str(output)},
        "model": {"init_from": None, "init_layout": None},
        "data": {"data": [str(corpus)], "data_weights": None, "split": "949,50,1",
                 "data_cache_dir": None, "max_epochs": 1},
        "training": {"max_steps": MEASURED_RUN, "to_static": False},
        "schedule": {"warmup_steps": 0, "decay_steps": None},
        "eval": {"eval_every": 0},
        "checkpoint": {"save_every": 0, "keep_last": 1, "resume": None},
        "logging": {"report_to": "jsonl", "log_every": 1},
        "profiling": {"profile_steps": None},
        "launch": {"nproc_per_node": None, "nnodes": 1, "master": None, "node_rank": None,
                   "plan_check": False},
    }  # fmt: skip
    for section, values in overrides.items():
        sections[section].update(values)
    return sections


def compare(plan: Plan, measured: list[dict]) -> list[dict]:
    """Per rank: predicted and measured bytes, the relative error, whether within budget."""
    stages = {stage.stage: stage for stage in plan.stages}
    rows = []
    for record in sorted(measured, key=lambda r: r["rank"]):
        stage = stages[record["coordinates"]["pp"]]
        predicted = {
            "parameters": stage.bytes["parameters"],
            "gradients": stage.bytes["gradients"],
            "optimizer": stage.bytes["optimizer"],
            "activations": stage.activations_per_micro_batch,
        }
        got = {name: record["bytes"][name] for name in BUDGET}
        error = {name: (predicted[name] - got[name]) / got[name] if got[name] else 0.0
                 for name in BUDGET}  # fmt: skip
        rows.append({
            "rank": record["rank"],
            "coordinates": record["coordinates"],
            "parameters": {"predicted": stage.parameters, "measured": record["parameters"]},
            "predicted": predicted,
            "measured": got,
            "error": error,
            "within_budget": all(abs(error[name]) <= BUDGET[name] for name in BUDGET)
            and stage.parameters == record["parameters"],
            "saved_tensors": record.get("saved_tensors", []),
        })  # fmt: skip
    return rows


def check_lines(plan: Plan, rows: list[dict], model_name: str, ok: bool) -> list[str]:
    from llama_train.plan.report import describe_job, table

    header = ("rank", "pp,dp,mp", *(f"{name} B: predicted / measured" for name in BUDGET))
    cells = []
    for row in rows:
        c = row["coordinates"]
        cells.append((str(row["rank"]), f"{c['pp']},{c['dp']},{c['mp']}", *(
            f"{row['predicted'][name]:,} / {row['measured'][name]:,} ({row['error'][name]:+.2%})"
            for name in BUDGET)))  # fmt: skip
    lines = [f"check: {model_name}, {describe_job(plan.job)}", *table(header, cells)]
    if ok:
        lines.append(
            "check: every rank within budget (states ±1%, activations ±10% per micro-batch)"
        )
    else:
        worst = max(rows, key=lambda r: max(abs(r["error"][n]) / BUDGET[n] for n in BUDGET))
        name = max(BUDGET, key=lambda n: abs(worst["error"][n]) / BUDGET[n])
        lines.append(
            f"check: rank {worst['rank']} {name} off by {worst['error'][name]:+.2%} (budget "
            f"±{BUDGET[name]:.0%})"
        )
    return lines

"""Each user mistake ends in one line, ``Error: ...``, exit code 2, before any process starts."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY, losses, run_cli

from llama_data import IndexedDataset, split_boundaries
from llama_train.cli import main


def invoke(args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    return result.exit_code, lines


@pytest.fixture
def base(tiny_corpus, tmp_path):
    return [
        *TINY,
        "--data",
        tiny_corpus,
        "--output",
        tmp_path / "out",
        "--micro-batch-size",
        "4",
        "--max-steps",
        "5",
    ]


PP2_VPP = ["--strategy", "pp2", "--pp-schedule", "VPP", "--virtual-pp-degree", "2"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--strategy", "dp2zz"], "cannot parse strategy 'dp2zz'"),
        (["--strategy", "dp2mp2pp2", "--nproc-per-node", "4"], "needs 8 processes"),
        (["--strategy", "mp3"], "mp3 does not divide num_attention_heads (4)"),
        (["--strategy", "pp8"], "pp8 exceeds num_hidden_layers (4)"),
        (
            ["--strategy", "dp2", "--micro-batch-size", "3", "--global-batch-size", "8"],
            "not a multiple of micro-batch-size 3",
        ),
        (["--amp", "bf16"], "bfloat16 compute needs a GPU"),
        (
            ["--strategy", "mp2", "--sequence-parallel"],
            "sequence_parallel needs a GPU: it reduce-scatters activations",
        ),
        (["--strategy", "dp2", "--sharding-stage", "2"], "sharding_stage 2 needs a GPU"),
        (["--sequence-parallel"], "sequence_parallel splits over mp and needs mp > 1"),
        (["--sharding-stage", "1"], "sharding_stage shards over dp and needs dp > 1"),
        (["--strategy", "dp2", "--sharding-stage", "4"], "sharding_stage must be 0, 1, 2 or 3"),
        (["--amp", "fp16"], "--amp fp16 is not supported"),
        (["--to-static", "--strategy", "dp2mp2"], "to_static with dp×mp needs a GPU"),
        (
            ["--to-static", "--grad-accum", "2"],
            "--to-static runs the global batch as one micro-batch",
        ),
        (["--to-static", "--strategy", "pp2"], "to_static does not support pp > 1"),
        (["--pp-schedule", "VPP", "--virtual-pp-degree", "2"], "stages and needs pp > 1"),
        (["--strategy", "pp2", "--pp-schedule", "VPP"], "needs virtual_pp_degree ≥ 2"),
        (["--strategy", "pp2", "--virtual-pp-degree", "2"], "needs the VPP schedule"),
        ([*PP2_VPP[:-1], "3", "--grad-accum", "2"], "6 chunks do not split num_hidden_layers"),
        ([*PP2_VPP, "--micro-batch-size", "2", "--global-batch-size", "6"], "multiple of pp2"),
        (
            ["--to-static", *PP2_VPP, "--grad-accum", "2"],
            "--to-static runs the global batch as one",
        ),
        (["--resume", "/nonexistent/ckpt"], "no such checkpoint directory"),
        (["--model-config", "nosuchpreset"], "neither a preset"),
    ],
)
def test_refused_in_one_line(base, extra, message):
    code, lines = invoke([*base, *extra])
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines


def test_missing_data_prefix(base, tmp_path):
    code, lines = invoke([*base, "--data", tmp_path / "nothing"])
    assert code == 2 and len(lines) == 1
    assert "nothing.idx: no such file" in lines[0]


def test_token_ids_beyond_the_vocabulary(base, tmp_path):
    # A model whose vocabulary (128) is smaller than the byte tokens in the data (EOS is 257).
    config = tmp_path / "small_vocab.json"
    config.write_text(json.dumps({"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "max_position_embeddings": 64}))  # fmt: skip
    args = [a for a in base if a != "byte"]
    args.remove("--tokenizer")
    code, lines = invoke([*args, "--model-config", config])
    assert code == 2 and len(lines) == 1
    assert "is outside the vocabulary of 128" in lines[0]


def test_too_little_data_says_how_many_samples(base, tiny_corpus):
    ds = IndexedDataset(tiny_corpus)
    first, last = split_boundaries("949,50,1", ds.num_docs)[:2]
    tokens = int(ds.sizes[first:last].sum())
    samples = (tokens - 1) // 32  # one epoch of 33-token samples overlapping by one token
    code, lines = invoke([*base, "--max-steps", "100000"])
    assert code == 2 and len(lines) == 1
    assert (
        f"holds {samples:,} samples" in lines[0]
        and "100,000 steps × 4 samples need 400,000" in lines[0]
    )
    # Two epochs hold twice as many: allowed once asked for.
    code, lines = invoke([*base, "--max-steps", str(samples // 4 + 1)])
    assert code == 2 and "--max-epochs" in lines[0]


def test_existing_run_needs_resume(base, tmp_path):
    latest = tmp_path / "out" / "checkpoints" / "step-00000001"
    latest.mkdir(parents=True)
    (latest / "COMPLETE").write_text("1\n")
    (latest / "trainer_state.json").write_text("{}")
    (latest.parent / "latest").write_text("step-00000001\n")
    code, lines = invoke(base)
    assert code == 2 and "already holds checkpoints: pass --resume auto" in lines[0]


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    tiny_corpus, tmp_path
):
    # An absurd learning rate makes the weights overflow after the first update.
    out = tmp_path / "nan"
    args = [*TINY, "--data", tiny_corpus, "--output", out, "--micro-batch-size", "4", "--max-steps", "5",
            "--lr", "1e30", "--min-lr", "0", "--save-every", "1"]  # fmt: skip
    result = run_cli(args, timeout=120)
    assert result.returncode == 3, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "non-finite" in errors[0] and "at step 2" in errors[0]
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-00000001"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-00000001"]
    assert np.isfinite(losses(out)[1])


@pytest.mark.parametrize(
    "extra, line",
    [
        (["--sequence-parallel"],
         "--sequence-parallel: sequence_parallel splits over mp and needs mp > 1"),
        (["--strategy", "mp2", "--sequence-parallel"],
         "--sequence-parallel: sequence_parallel needs a GPU: it reduce-scatters activations, "
         "which Paddle 3.3.1 lacks on CPU"),
        (["--sharding-stage", "1"],
         "--sharding-stage: sharding_stage shards over dp and needs dp > 1"),
        (["--strategy", "dp2", "--sharding-stage", "4"],
         "--sharding-stage: sharding_stage must be 0, 1, 2 or 3, got 4"),
        (["--strategy", "dp2", "--sharding-stage", "2"],
         "--sharding-stage: sharding_stage 2 needs a GPU: it reduce-scatters gradients, which "
         "Paddle 3.3.1 lacks on CPU"),
        (["--pp-schedule", "VPP", "--virtual-pp-degree", "2"],
         "--pp-schedule: the VPP schedule interleaves pipeline stages and needs pp > 1"),
        (["--strategy", "pp2", "--pp-schedule", "VPP"],
         "--pp-schedule: the VPP schedule needs virtual_pp_degree ≥ 2 (chunks per rank)"),
        (["--strategy", "pp2", "--virtual-pp-degree", "2"],
         "--virtual-pp-degree: virtual_pp_degree 2 needs the VPP schedule (schedule is 1F1B)"),
        (["--strategy", "dp2zz"],
         "--strategy: cannot parse strategy 'dp2zz': expected axes dp/mp/pp each followed by a "
         "degree, optionally separated by '-', '_' or 'x', e.g. 'dp2mp2pp2'"),
    ],
)  # fmt: skip
def test_each_layout_option_is_named_in_its_refusal(base, extra, line):
    """--pp-schedule, --sequence-parallel and --sharding-stage used to be refused as
    "--strategy: ..."; each refusal names its own option."""
    code, lines = invoke([*base, *extra])
    assert code == 2 and lines == [f"Error: {line}"], lines

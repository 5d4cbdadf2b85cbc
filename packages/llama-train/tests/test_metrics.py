import json
import math

import pytest

from llama_model import LlamaConfig, preset
from llama_train import flops_per_token, read_metrics
from llama_train.metrics import MetricsFile, format_eval, format_step


def test_flops_per_token_counts_matmul_weights_and_attention():
    cfg = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    # Counted by hand from the shapes: q,o 64x64; k,v 64x32 (2 kv heads of 16); gate,up,down 64x160;
    # two norms of 64 per layer; final norm; LM head 64x1000. The input embedding is a lookup.
    per_layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 160 + 2 * 64
    n = 3 * per_layer + 64 + 64 * 1000
    attention = 12 * 3 * 4 * 16 * 256  # 12·L·H·Q·T at T = 256
    assert flops_per_token(cfg, 256) == 6 * n + attention


def test_tied_embedding_counts_once_as_the_head():
    cfg = preset("tiny", tie_word_embeddings=True)
    untied = preset("tiny")
    assert flops_per_token(untied, 64) - flops_per_token(cfg, 64) == pytest.approx(0.0)


def _strict(line: str) -> dict:
    """json.loads that refuses NaN and Infinity, which are not JSON."""

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


def test_non_finite_values_are_written_as_null_and_named(tmp_path):
    nan, inf = float("nan"), float("inf")
    train = {"step": 3, "split": "train", "loss": nan, "lr": 1e-3, "grad_norm": inf, "tokens_per_s": 100.0,
             "tokens_per_s_per_device": 50.0, "step_time_s": 0.25, "mfu": None}  # fmt: skip
    valid = {"step": 3, "split": "valid", "valid_loss": -inf, "valid_ppl": 0.0}
    metrics = MetricsFile(str(tmp_path), resume_step=None)
    metrics.write(train)
    metrics.write(valid)
    metrics.write({"step": 4, "split": "valid", "valid_loss": 2.0, "valid_ppl": 7.389})
    metrics.close()
    assert math.isnan(train["loss"])  # the caller's record is left as it was

    lines = [_strict(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_line = {**train, "loss": None, "grad_norm": None}
    train_line["non_finite"] = {"loss": "nan", "grad_norm": "inf"}
    assert lines == [
        train_line,
        {**valid, "valid_loss": None, "non_finite": {"valid_loss": "-inf"}},
        {"step": 4, "split": "valid", "valid_loss": 2.0, "valid_ppl": 7.389},
    ]
    assert read_metrics(str(tmp_path)) == lines

    # The log lines of records read back: the null values show as they were.
    assert format_step(lines[0], 10) == (
        "step 3/10 | loss nan | lr 1.000e-03 | grad_norm inf | tokens/s 100 | tokens/s/device 50 "
        "| step_time 250.0ms"
    )
    assert format_eval(lines[1]) == "eval step 3 | valid_loss -inf | valid_ppl 0.00"
    assert format_eval({"step": 5, "valid_loss": None, "valid_ppl": None}) == (
        "eval step 5 | valid_loss n/a | valid_ppl n/a"
    )


def test_resume_truncates_records_holding_nulls(tmp_path):
    metrics = MetricsFile(str(tmp_path), resume_step=None)
    for step in (1, 2, 3):
        metrics.write({"step": step, "split": "train", "loss": float("nan") if step == 2 else 1.0})
    metrics.close()
    MetricsFile(str(tmp_path), resume_step=2).close()
    assert read_metrics(str(tmp_path)) == [
        {"step": 1, "split": "train", "loss": 1.0},
        {"step": 2, "split": "train", "loss": None, "non_finite": {"loss": "nan"}},
    ]


def test_mfu_by_hand_and_the_peak_table():
    from llama_train.metrics import model_flops_utilisation, peak_tflops_of

    # 8 H100 SXM in bf16 (989.5 TFLOP/s each, dense), the job doing 100,000 tokens/s (the global
    # rate) at 6e9 FLOPs per token: 6e14 FLOP/s over 8 × 989.5e12 = 7.916e15 -> 0.075796...
    assert model_flops_utilisation(100_000, 6e9, 8, 989.5) == pytest.approx(0.0757958565)
    # The same job on 16 devices at the same global rate: half the utilisation.
    assert model_flops_utilisation(100_000, 6e9, 16, 989.5) == pytest.approx(0.0378979283)
    assert peak_tflops_of("NVIDIA H100 80GB HBM3", "bfloat16") == 989.5
    assert peak_tflops_of("NVIDIA H100 PCIe", "bfloat16") == 756.0
    assert peak_tflops_of("NVIDIA H200", "float32") == 67.0
    assert peak_tflops_of("NVIDIA H800", "float16") == 989.5
    assert peak_tflops_of("NVIDIA A100-SXM4-80GB", "float32") == 19.5
    assert peak_tflops_of("Tesla V100-SXM2-32GB", "float16") == 125.0
    assert peak_tflops_of("Tesla V100-PCIE-16GB", "float32") == 14.0
    assert peak_tflops_of("Tesla V100-SXM2-32GB", "bfloat16") is None  # no bf16 on Volta
    assert peak_tflops_of("NVIDIA GeForce RTX 4090", "bfloat16") is None

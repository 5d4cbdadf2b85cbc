"""Throughput, model FLOPs utilisation and the metrics file.

FLOPs per token follow PaLM (Chowdhery et al. 2022, appendix B), the convention nanoGPT and
torchtitan use too::

    flops/token = 6·N + 12·L·H·Q·T

* ``N``: parameters that take part in a matmul: every weight except the input embedding (a table
  lookup); the LM head counts. 6 = 2 FLOPs per multiply-add × (1 forward + 2 backward).
* ``12·L·H·Q·T``: the attention scores and the weighted sum, ``L`` layers, ``H`` heads of ``Q``
  dimensions, sequence length ``T``, forward and backward; the causal mask is not discounted.
* Recomputation is not counted (model FLOPs, not hardware FLOPs).

MFU = tokens/s × flops/token ÷ (devices × peak FLOP/s of one device), where tokens/s is the global
rate (every token of the global batch once, whatever the layout) and devices the job's world size;
tokens/s/device is the global rate over the devices. The peak is ``--peak-tflops``, or for a known
GPU its dense figure in the compute dtype (``GPU_PEAK_TFLOPS``); on CPU there is none unless given.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from llama_ckpt.atomic import write_atomic

FLOPS_FORMULA = "6N + 12·L·H·Q·T (PaLM; N = matmul parameters incl. LM head, excl. input embedding)"

# Dense peaks (TFLOP/s, no sparsity) of one GPU per compute dtype, from NVIDIA's datasheets (the
# README cites each); matched by a substring of the device name, the first match wins (a PCIe part
# before its SXM sibling). float32 is the plain FP32 rate (TF32 tensor cores are not counted: a
# run in float32 does not use them unless it is told to). V100 has no bf16.
GPU_PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bfloat16": 756.0, "float16": 756.0, "float32": 51.0}),
    ("H100", {"bfloat16": 989.5, "float16": 989.5, "float32": 67.0}),
    ("H200 NVL", {"bfloat16": 835.5, "float16": 835.5, "float32": 60.0}),
    ("H200", {"bfloat16": 989.5, "float16": 989.5, "float32": 67.0}),
    ("H800 PCIe", {"bfloat16": 756.0, "float16": 756.0, "float32": 51.0}),
    ("H800", {"bfloat16": 989.5, "float16": 989.5, "float32": 67.0}),
    ("H20", {"bfloat16": 148.0, "float16": 148.0, "float32": 44.0}),  # after H200: a substring
    ("L40S", {"bfloat16": 362.05, "float16": 362.05, "float32": 91.6}),
    ("A100", {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5}),
    ("A800", {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5}),
    ("V100-PCIE", {"float16": 112.0, "float32": 14.0}),
    ("V100", {"float16": 125.0, "float32": 15.7}),
)


def peak_tflops_of(device_name: str, compute_dtype: str) -> float | None:
    """The table's peak for a GPU name and compute dtype, or None if the GPU is not in it."""
    for key, peaks in GPU_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return peaks.get(compute_dtype)
    return None


def model_flops_utilisation(
    tokens_per_s: float, flops_per_token_: float, devices: int, peak_tflops: float
) -> float:
    """Model FLOPs utilisation: the model FLOPs the whole job does per second (from the global
    token rate) over the peak of all its devices."""
    return tokens_per_s * flops_per_token_ / (devices * peak_tflops * 1e12)


def flops_per_token(config, seq_len: int) -> float:
    n_matmul = config.num_parameters() - config.vocab_size * config.hidden_size * (
        0 if config.tie_word_embeddings else 1
    )
    attention = (
        12 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * seq_len
    )
    return 6.0 * n_matmul + attention


def default_peak_tflops(compute_dtype: str) -> float | None:
    """The peak of this machine's GPU for ``compute_dtype`` (the table above); None on CPU or for a
    GPU the table does not know (then ``--peak-tflops`` gives it)."""
    try:
        import paddle

        if not paddle.is_compiled_with_cuda() or paddle.device.cuda.device_count() == 0:
            return None
        name = paddle.device.cuda.get_device_name()
    except Exception:  # no device information: no MFU rather than a wrong one
        return None
    return peak_tflops_of(name, compute_dtype)


class MetricsFile:
    """``OUTPUT/metrics.jsonl``: one JSON object per logged step or evaluation (rank 0 writes it)."""

    def __init__(self, output: str, resume_step: int | None):
        self.path = Path(output) / "metrics.jsonl"
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        else:
            self._truncate_after(resume_step)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run

    def _truncate_after(self, step: int) -> None:
        """Drop records of steps past the checkpoint a resumed run starts from (they are redone)."""
        if not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step
        ]
        write_atomic(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        """Append ``record`` as one line of strict JSON: a NaN or infinite value is written as
        ``null`` and named, with its value, in ``"non_finite"`` (``{"valid_loss": "nan"}``)."""
        non_finite: dict[str, str] = {}
        line = {key: _finite_or_none(key, value, non_finite) for key, value in record.items()}
        if non_finite:
            line["non_finite"] = non_finite
        self._fh.write(json.dumps(line, allow_nan=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _finite_or_none(name: str, value, non_finite: dict[str, str]):
    """``value`` with every non-finite float in it replaced by None and noted in ``non_finite``
    under its name (``a.b`` in a nested record, ``a[2]`` in a list)."""
    if isinstance(value, float) and not math.isfinite(value):
        non_finite[name] = str(float(value))
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(f"{name}.{k}", v, non_finite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(f"{name}[{i}]", v, non_finite) for i, v in enumerate(value)]
    return value


def read_metrics(output: str) -> list[dict]:
    path = Path(output) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _number(record: dict, key: str, spec: str, scale: float = 1.0) -> str:
    """A field of a record, formatted: a value the metrics file holds as null shows as it was
    (``nan``, ``inf``; from ``"non_finite"``), a missing one as ``n/a``."""
    value = record.get(key)
    if value is None:
        return record.get("non_finite", {}).get(key, "n/a")
    return format(value * scale, spec)


def format_step(record: dict, max_steps: int) -> str:
    """The log line of a train record (the launcher parses its leading ``step k/n``)."""
    parts = [
        f"step {record['step']}/{max_steps}",
        f"loss {_number(record, 'loss', '.4f')}",
        f"lr {_number(record, 'lr', '.3e')}",
    ]
    if record.get("grad_norm") is not None or "grad_norm" in record.get("non_finite", {}):
        parts.append(f"grad_norm {_number(record, 'grad_norm', '.3f')}")
    parts += [
        f"tokens/s {_number(record, 'tokens_per_s', ',.0f')}",
        f"tokens/s/device {_number(record, 'tokens_per_s_per_device', ',.0f')}",
        f"step_time {_number(record, 'step_time_s', '.1f', 1000)}ms",
    ]
    if record.get("mfu") is not None:
        parts.append(f"mfu {_number(record, 'mfu', '.1f', 100)}%")
    if record.get("peak_memory_gib") is not None:
        parts.append(f"peak_mem {_number(record, 'peak_memory_gib', '.2f')}GiB")
    return " | ".join(parts)


def format_eval(record: dict) -> str:
    return (
        f"eval step {record['step']} | valid_loss {_number(record, 'valid_loss', '.4f')} | "
        f"valid_ppl {_number(record, 'valid_ppl', '.2f')}"
    )

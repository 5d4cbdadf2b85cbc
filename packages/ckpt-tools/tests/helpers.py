"""Small test helpers: run the CLI in-process, read tensors independently of llama_ckpt."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from llama_ckpt.cli import main


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """bf16 bits of float32 values exactly representable in bf16 (the high half of each word)."""
    return (np.asarray(values, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def expected_unique_id0() -> dict[str, tuple[str, np.ndarray]]:
    """Every key of the unique-id-0 save, as (dtype name, storage bits) computed from tiny_model."""
    import tiny_model as T

    out = {f"model.{k}": ("float32", v) for k, v in T.model_values().items()}
    for k, (v, dtype, _) in T.extra_values().items():
        out[f"extra.{k}"] = (dtype, bf16_bits(v) if dtype == "bfloat16" else v)
    out.update({f"optimizer.{k}": ("float32", v) for k, v in T.optimizer_values().items()})
    return out

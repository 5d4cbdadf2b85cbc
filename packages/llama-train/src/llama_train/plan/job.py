"""What a plan is made of: the model, the run's Strategy, the batch, the compute and the device."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from llama_model import LlamaConfig, Strategy
from llama_train.plan.devices import Device

LLAMA_OPS, PLAIN = "llama-ops", "plain"


def kernels_in_use() -> str:
    """The kernels the ranks will run: llama-ops' when it is installed and not switched off
    (``LLAMA_MODEL_NO_OPS``), else plain Paddle — llama_model.kernels' choice, told without
    importing llama-ops (a front process should not load kernels it does not run)."""
    if os.environ.get("LLAMA_MODEL_NO_OPS") or importlib.util.find_spec("llama_ops") is None:
        return PLAIN
    return LLAMA_OPS


@dataclass(frozen=True)
class Job:
    """One layout of one training job, as the plan sees it."""

    config: LlamaConfig
    strategy: Strategy  # degrees, micro-batches, schedule, VPP, SP, sharding: the run's own
    micro_batch_size: int
    seq_len: int
    recompute: str | None  # None, "full" or "attention"
    compute_dtype: str  # "float32" or "bfloat16" (--amp bf16)
    device: Device
    kernels: str = LLAMA_OPS

    @property
    def compute_bytes(self) -> int:
        return 2 if self.compute_dtype == "bfloat16" else 4

    @property
    def flash_attention(self) -> bool:
        """On a GPU attention is Paddle's scaled_dot_product_attention (flash attention), on a
        CPU the model's own composition (``kernels.causal_attention``)."""
        return self.device.gpu

    @property
    def expanded_rope_tables(self) -> bool:
        """Plain Paddle's rotary embedding on a CPU build expands its tables to q's and k's shape
        when the tensors are not distributed (``kernels._rotate``)."""
        return self.kernels == PLAIN and not self.device.gpu and self.strategy.world_size == 1

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.strategy.dp * self.strategy.micro_batches

    @classmethod
    def of(cls, record, config: LlamaConfig, device: Device) -> Job:
        """The plan's view of a resolved run (``run_record.RunRecord``) on ``device``."""
        from llama_train.model_setup import compute_dtype

        training = record.options.training
        recompute = training.recompute_granularity if training.recompute else None
        return cls(config, record.strategy, training.micro_batch_size, record.seq_len, recompute,
                   compute_dtype(training.amp), device, kernels_in_use())  # fmt: skip

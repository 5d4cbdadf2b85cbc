"""Dynamic-to-static training steps (``dist.to_static``) for the layouts Paddle can compile.

Paddle 3.3.1 runs a compiled auto-parallel program correctly only where each rank needs a single
communicator on CPU: its CPU collective kernels ignore the ring id and use the first communicator
bound (see gloo_compat, defect 5). So on CPU: one process, dp-only or mp-only. On GPU: any dp×mp.
Pipeline parallelism is never compiled here: this package runs one stage per rank through the eager
pipelining schedules, while Paddle's static pipeline needs the whole model on per-stage meshes.
The compiled step takes the global batch as one micro-batch (no accumulation).
"""

from __future__ import annotations

import numpy as np

from llama_model import gloo_compat, plan
from llama_model._paddle import paddle
from llama_model.errors import LlamaModelError
from llama_model.loss import IGNORE_INDEX

dist = paddle.distributed


def check_static_supported(strategy, on_gpu: bool | None = None) -> None:
    """Raise a one-line LlamaModelError for a layout ``to_static`` cannot run correctly here."""
    on_gpu = paddle.is_compiled_with_cuda() if on_gpu is None else on_gpu
    if strategy.pp > 1:
        raise LlamaModelError(
            "to_static does not support pp > 1 (stages run through the eager pipelining schedules)"
        )
    if strategy.micro_batches > 1:
        raise LlamaModelError(
            "to_static runs the global batch as one micro-batch: use micro_batches=1"
        )
    if not on_gpu and strategy.dp > 1 and strategy.mp > 1:
        raise LlamaModelError(
            "to_static with dp×mp needs a GPU: on CPU Paddle 3.3.1 runs every collective of a "
            "compiled program on one communicator (wrong numbers); use the eager step"
        )


def _static_loss(logits, labels):
    """Mean token loss with the valid-token count computed in the graph (labels are the global batch)."""
    losses = paddle.nn.functional.cross_entropy(
        logits.astype("float32"), labels.unsqueeze(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    valid = (labels != IGNORE_INDEX).astype("float32").sum()
    return losses.sum() / paddle.maximum(valid, paddle.ones_like(valid))


class _ShapeOnly(paddle.io.Dataset):
    """to_static reads input shapes and dtypes from a loader; this one yields zero batches."""

    def __init__(self, batch: int, seq: int):
        self.batch, self.seq = batch, seq

    def __getitem__(self, i):
        row = np.zeros([self.seq], dtype=np.int64)
        return row, row

    def __len__(self):
        return self.batch


class StaticStep:
    """A compiled training step: ``step(input_ids, labels) -> loss`` runs forward, backward and the
    optimizer update of the global batch (fixed shape [batch, seq]). Built by ``ParallelModel.to_static``.
    Gradient clipping, if wanted, is the optimizer's own ``grad_clip`` here."""

    def __init__(self, parallel_model, optimizer, batch: int, seq: int):
        strategy = parallel_model.strategy
        check_static_supported(strategy)
        strategy.validate_batch(batch)
        if gloo_compat.is_gloo() and parallel_model.distributed:
            gloo_compat.patch_static_process_groups()
        mesh = parallel_model.layout.stage_mesh
        if mesh is None:  # one process: a one-rank mesh, so the same compiler path runs
            mesh = dist.ProcessMesh([[0]], dim_names=["dp", "mp"])
            plan.apply_plan(parallel_model.module, mesh)
        self.mesh = mesh
        self.shape = (batch, seq)
        loader = paddle.io.DataLoader(
            _ShapeOnly(batch, seq), batch_size=batch, shuffle=False, drop_last=True
        )
        loader = dist.shard_dataloader(
            loader, meshes=[mesh], shard_dims="dp" if strategy.dp > 1 else None
        )
        self._param_names = {name for name, _ in parallel_model.module.named_parameters()}
        self.model = dist.to_static(
            parallel_model.module, loader, _static_loss, optimizer, dist.Strategy()
        )
        self.model.train()

    def state_dict(self, prefix: str = "") -> dict:
        """The compiled program's parameters under their full-model names (the eager module's
        parameters no longer follow training once it is compiled)."""
        # The program also holds the rotary tables as unnamed constants; keep the model's parameters.
        state = self.model.state_dict(mode="param")
        return {prefix + k: v for k, v in state.items() if k in self._param_names}

    def __call__(self, input_ids, labels) -> float:
        input_ids = np.asarray(input_ids, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if input_ids.shape != self.shape or labels.shape != self.shape:
            raise LlamaModelError(f"this compiled step takes batches of shape {list(self.shape)}")
        pl = plan.data_placements(self.mesh.dim_names)
        loss = self.model(
            dist.shard_tensor(paddle.to_tensor(input_ids), self.mesh, pl),
            dist.shard_tensor(paddle.to_tensor(labels), self.mesh, pl),
        )
        local = loss._local_value() if getattr(loss, "is_dist", lambda: False)() else loss
        return float(np.asarray(local, dtype=np.float64).reshape(-1)[0])

"""Dynamic-to-static training steps (``dist.to_static``) for the layouts Paddle can compile.

Paddle 3.3.1 runs a compiled auto-parallel program correctly only where each rank needs a single
communicator on CPU: its CPU collective kernels ignore the ring id and use the first communicator
bound (see paddle_compat.gloo, defect 5). So on CPU: one process, dp-only or mp-only. On GPU: any dp×mp.
Pipeline parallelism is never compiled here: this package runs one stage per rank through the eager
pipelining schedules, while Paddle's static pipeline needs the whole model on per-stage meshes.
The compiled step takes the global batch as one micro-batch (no accumulation).

What a trainer needs from the compiled step and Paddle's ``DistModel`` does not give directly:

- the global gradient norm, clipped by as in the eager ``ParallelModel.clip_grad_norm``: computed in
  the program by ``GlobalNormClip`` and fetched beside the loss;
- a learning rate per step: the program reads it from a scope variable, set before each run;
- state under full-model names: ``DistModel`` names parameters structurally but optimizer state by
  automatic names (``linear_3.w_0.dist_moment1_0``), which depend on how many layers were built.
  Here accumulators are ``<param name>.<accumulator>``, as the eager trainer names them, so a
  checkpoint moves between layouts and between the eager and the compiled step.
"""

from __future__ import annotations

import re

import numpy as np

from llama_model import plan
from llama_model._paddle import paddle
from llama_model.errors import LlamaModelError
from llama_model.loss import IGNORE_INDEX
from llama_model.paddle_compat import gloo, static_engine
from llama_model.paddle_compat.tensors import local_value, share_data

dist = paddle.distributed

# The name the program gives the gradient norm, so that it can be fetched like the loss.
GRAD_NORM_NAME = "llama_model_grad_norm"
# ``<automatic parameter name>_<accumulator>_<n>``, e.g. ``linear_3.w_0.dist_moment1_0``.
_ACCUMULATOR = re.compile(
    r"^(?P<param>.+)_(?P<acc>moment1|moment2|beta1_pow_acc|beta2_pow_acc)_\d+$"
)


def check_static_supported(
    strategy, on_gpu: bool | None = None, compute_dtype: str = "float32"
) -> None:
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
    if strategy.sequence_parallel or strategy.sharding_stage:
        raise LlamaModelError(
            "to_static does not compile sequence parallelism or sharding stages here: use the eager step"
        )
    if not on_gpu and strategy.dp > 1 and strategy.mp > 1:
        raise LlamaModelError(
            "to_static with dp×mp needs a GPU: on CPU Paddle 3.3.1 runs every collective of a "
            "compiled program on one communicator (wrong numbers); use the eager step"
        )
    if not on_gpu and compute_dtype != "float32":
        raise LlamaModelError(f"{compute_dtype} compute needs a GPU")


def _static_loss(logits, labels):
    """Mean token loss with the valid-token count computed in the graph (labels are the global batch)."""
    losses = paddle.nn.functional.cross_entropy(
        logits.astype("float32"), labels.unsqueeze(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    valid = (labels != IGNORE_INDEX).astype("float32").sum()
    return losses.sum() / paddle.maximum(valid, paddle.ones_like(valid))


class GlobalNormClip(paddle.nn.clip.ClipGradBase):
    """Clipping by the global gradient norm inside a compiled program, with the eager step's rule:
    every gradient times min(1, max_norm / (norm + eps)); ``max_norm`` 0 only measures the norm.

    The norm is named ``GRAD_NORM_NAME`` in the program so that the step can fetch it. Sums of squares
    of sharded or partial gradients are completed by the auto-parallel partitioner (its reshard pass
    inserts the all-reduces), which the parity tests check against one process."""

    def __init__(self, max_norm: float, eps: float = 1e-6):
        super().__init__()
        self.max_norm, self.eps = float(max_norm), float(eps)

    def _dygraph_clip(self, params_grads):
        raise LlamaModelError(
            "GlobalNormClip runs inside a compiled program; eager steps use ParallelModel.clip_grad_norm"
        )

    _static_clip = _dygraph_clip  # the legacy static graph: Paddle 3.3.1 compiles through PIR

    def _pir_clip(self, params_grads):
        squares = [
            paddle.sum(paddle.square(g.astype("float32"))) for _, g in params_grads if g is not None
        ]
        if not squares:
            return params_grads
        norm = paddle.sqrt(paddle.add_n(squares))
        static_engine.keep_by_name(norm, GRAD_NORM_NAME)
        if self.max_norm <= 0:
            return params_grads
        coef = paddle.clip(self.max_norm / (norm + self.eps), max=1.0)
        return [(p, g if g is None else g * coef.astype(g.dtype)) for p, g in params_grads]


class _ShapeOnly(paddle.io.Dataset):
    """to_static reads input shapes and dtypes from a loader; this one yields zero batches."""

    def __init__(self, batch: int, seq: int):
        self.batch, self.seq = batch, seq

    def __getitem__(self, i):
        row = np.zeros([self.seq], dtype=np.int64)
        return row, row

    def __len__(self):
        return self.batch


def _scalar(value) -> float:
    local = local_value(value) if hasattr(value, "is_dist") else value
    return float(np.asarray(local, dtype=np.float64).reshape(-1)[0])


class StaticStep:
    """A compiled training step: ``step(input_ids, labels) -> loss`` runs forward, backward, gradient
    clipping and the optimizer update of the global batch (fixed shape [batch, seq]); afterwards
    ``step.grad_norm`` is that step's global gradient norm before clipping. Built by
    ``ParallelModel.to_static``; the optimizer must come without a ``grad_clip`` of its own."""

    def __init__(self, parallel_model, optimizer, batch: int, seq: int, clip_norm: float = 0.0):
        strategy = parallel_model.strategy
        check_static_supported(strategy, compute_dtype=parallel_model.compute_dtype)
        strategy.validate_batch(batch)
        if static_engine.grad_clip_of(optimizer) is not None:
            raise LlamaModelError(
                "give the optimizer no grad_clip: the compiled step clips by the global norm itself (clip_norm)"
            )
        if gloo.is_gloo() and parallel_model.distributed:
            gloo.patch_static_process_groups()
        self.parallel_model = parallel_model
        mesh = parallel_model.layout.stage_mesh
        if mesh is None:  # one process: a one-rank mesh, so the same compiler path runs
            mesh = dist.ProcessMesh([[0]], dim_names=["dp", "mp"])
            plan.apply_plan(parallel_model.module, mesh)
        self.mesh = mesh
        self.shape = (batch, seq)
        self.grad_norm = float("nan")
        loader = paddle.io.DataLoader(
            _ShapeOnly(batch, seq), batch_size=batch, shuffle=False, drop_last=True
        )
        loader = dist.shard_dataloader(
            loader, meshes=[mesh], shard_dims="dp" if strategy.dp > 1 else None
        )
        self._param_names = {name for name, _ in parallel_model.module.named_parameters()}
        # Compiling empties the module's buffers (the rotary tables); kept for sync_module.
        self._buffers = {
            name: buffer.clone() for name, buffer in parallel_model.module.named_buffers()
        }
        static_engine.set_grad_clip(optimizer, GlobalNormClip(clip_norm))
        config = {}
        if parallel_model.compute_dtype != "float32":
            # parameters stay float32, as under eager autocast O1
            config["amp"] = {"enable": True, "dtype": parallel_model.compute_dtype, "level": "O1"}
        if plan.recompute_granularity(parallel_model.module):
            # The layers mark their recomputed blocks when traced; the compiler's recompute pass,
            # enabled here, is what re-runs them in the backward.
            config["recompute"] = {"enable": True}
        with gloo.groups_created_apart():
            self.model = dist.to_static(
                parallel_model.module, loader, _static_loss, optimizer, dist.Strategy(config)
            )
        self.model.train()
        program = static_engine.main_program(self.model)
        norm = program.get_output_value_by_name(GRAD_NORM_NAME)
        static_engine.fetch_every_run(self.model, norm, "grad_norm")
        self._lr_name = _learning_rate_name(program)
        self._auto_to_full = static_engine.structured_names(self.model)

    # ------------------------------------------------------------------------------- the step
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
        self.grad_norm = _scalar(self.model.outs["grad_norm"])
        return _scalar(loss)

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next steps (the program reads it from a variable each run)."""
        tensor = paddle.static.global_scope().var(self._lr_name).get_tensor()
        tensor.set(np.asarray(lr, dtype=np.float32), static_engine.place(self.model))

    # -------------------------------------------------------------------------------- state
    def state_dict(self, prefix: str = "") -> dict:
        """The compiled program's parameters under their full-model names."""
        # The program also holds the rotary tables as unnamed constants; keep the model's parameters.
        state = self.model.state_dict(mode="param")
        return {prefix + k: v for k, v in state.items() if k in self._param_names}

    def optimizer_state_dict(self, prefix: str = "") -> dict:
        """The optimizer's accumulators as ``<param name>.<accumulator>`` (moment1, moment2,
        beta1_pow_acc, beta2_pow_acc): the names the eager trainer gives them."""
        out = {}
        for key, value in self.model.state_dict(mode="opt").items():
            name = self._accumulator_name(key)
            if name is not None:
                out[prefix + name] = value
        return out

    def _accumulator_name(self, key: str) -> str | None:
        """``linear_3.w_0.dist_moment1_0`` -> ``<its param's full name>.moment1``; None for the rest
        of the optimizer's state (the learning rate)."""
        match = _ACCUMULATOR.match(key)
        if match is None or match["param"] not in self._auto_to_full:
            return None
        return f"{self._auto_to_full[match['param']]}.{match['acc']}"

    def set_state_dict(self, params: dict | None = None, optimizer: dict | None = None) -> None:
        """Load parameters (full-model names) and accumulators (``optimizer_state_dict``'s names),
        e.g. the tensors of those two dicts after ``dist.load_state_dict`` filled them."""
        full_to_auto = {full: auto for auto, full in self._auto_to_full.items()}
        state = dict(params or {})
        if optimizer:
            auto_names = {self._accumulator_name(k): k for k in self.model.state_dict(mode="opt")}
            auto_names.pop(None, None)
            unknown = sorted(set(optimizer) - set(auto_names))
            if unknown:
                raise LlamaModelError(f"unknown optimizer state {unknown[0]!r}")
            state.update({auto_names[k]: v for k, v in optimizer.items()})
        unknown = sorted(k for k in params or {} if k not in full_to_auto)
        if unknown:
            raise LlamaModelError(f"unknown parameter {unknown[0]!r}")
        self.model.set_state_dict(state)

    def sync_module(self) -> None:
        """Give the eager module the compiled program's current weights, so that an eager evaluation,
        export or ``ParallelModel.state_dict`` sees the trained model. Compiling moved the storage of
        the module's parameters and buffers into the program and left the eager tensors empty; each
        call copies the parameters again (they move on with every step)."""
        trained = self.state_dict()
        for name, param in self.parallel_model.module.named_parameters():
            share_data(param.get_tensor(), trained[name].get_tensor())
        for name, buffer in self.parallel_model.module.named_buffers():
            share_data(buffer.get_tensor(), self._buffers[name].get_tensor())


def _learning_rate_name(program) -> str:
    # The optimizer reads its learning rate from a data variable of the program (Paddle's own engine
    # finds it the same way).
    for op in program.global_block().ops:
        if op.name() == "pd_op.data" and "learning_rate" in op.attrs()["name"]:
            return op.attrs()["name"]
    raise LlamaModelError("the compiled program has no learning-rate variable")

"""ParallelModel: one rank's share of a LLaMA training job under a dp/mp/pp strategy.

The trainer-facing API. Per rank it holds the pipeline stage this rank runs, its parameters placed by
the plan on the stage's ``[dp, mp]`` mesh, and the pipeline schedule; it runs forward + backward over
the micro-batches of a global batch, reports the step's loss on every rank, clips gradients by the
global norm across all shards and stages, and exposes the state dict under full-model names.

    pm = ParallelModel.build(config, Strategy.parse("dp2mp2pp2", micro_batches=4))
    opt = pm.shard_optimizer(paddle.optimizer.AdamW(1e-3, parameters=pm.parameters()))
    for input_ids, labels in batches:          # the *global* batch, the same on every rank
        loss = pm.forward_backward(input_ids, labels)
        pm.clip_grad_norm(1.0)
        opt.step(); opt.clear_grad()

A step that must not wait for the device more than once (a GPU step): ``forward_backward_tensor``
and ``clip_grad_norm_tensor`` keep the loss and the norm on the device, ``read_floats`` reads both
in one transfer.

With one process (``Strategy()`` / "dp1") nothing is distributed: plain tensors, same code path.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np

from llama_model import plan
from llama_model._paddle import no_strided_views, paddle
from llama_model.config import LlamaConfig
from llama_model.errors import LlamaModelError
from llama_model.loss import IGNORE_INDEX, ScaledTokenLoss, count_valid_tokens, token_loss_sum
from llama_model.paddle_compat import check_paddle_version, gloo, pipelining, static_engine
from llama_model.paddle_compat.tensors import local_value
from llama_model.pipeline import build_stage, make_schedule, pipeline_groups
from llama_model.strategy import Strategy

dist = paddle.distributed


def world_size_from_env() -> int:
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def init_distributed(strategy: Strategy) -> int:
    """Start the collective environment if the strategy needs one; returns this process's rank."""
    world = world_size_from_env()
    if world != strategy.world_size:
        raise LlamaModelError(
            f"strategy {strategy} needs {strategy.world_size} processes but the world size is {world}"
        )
    if world == 1:
        return 0
    check_paddle_version()
    gloo.apply()
    if not dist.is_initialized():
        dist.init_parallel_env()
    return dist.get_rank()


COMPUTE_DTYPES = ("float32", "bfloat16")


def check_backend_support(
    strategy: Strategy, compute_dtype: str = "float32", on_gpu: bool | None = None
) -> None:
    """Refuse, in one line, what Paddle 3.3.1 cannot run on a CPU build (instead of a hang, a crash
    deep in a kernel, or a silent fp32 run)."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise LlamaModelError(
            f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}"
        )
    on_gpu = paddle.is_compiled_with_cuda() if on_gpu is None else on_gpu
    if on_gpu:
        return
    if compute_dtype != "float32":
        raise LlamaModelError(
            f"{compute_dtype} compute needs a GPU: on CPU Paddle 3.3.1 ignores autocast and lacks bf16 training kernels"
        )
    if strategy.sequence_parallel:
        raise LlamaModelError(
            "sequence_parallel needs a GPU: it reduce-scatters activations, which Paddle 3.3.1 lacks on CPU"
        )

    if strategy.sharding_stage:
        raise LlamaModelError(
            f"sharding_stage {strategy.sharding_stage} needs a GPU: it reduce-scatters gradients, which Paddle 3.3.1 lacks on CPU"
        )


@dataclass
class _Layout:
    rank: int
    stage: int
    dp_rank: int
    mp_rank: int
    mesh: object = None  # ProcessMesh [pp, dp, mp], None with one process
    stage_mesh: object = None  # this stage's [dp, mp] sub-mesh


class ParallelModel:
    """Build with ``ParallelModel.build``; see the module docstring and the README for the API."""

    def __init__(
        self,
        config: LlamaConfig,
        strategy: Strategy,
        module,
        layout: _Layout,
        loss_fn,
        schedule=None,
        pp_group=None,
        compute_dtype: str = "float32",
    ):
        self.config = config
        self.strategy = strategy
        # this rank's stage: a LlamaForCausalLM holding its share of the layers
        self.module = module
        self.layout = layout
        self.loss_fn = loss_fn
        self.compute_dtype = compute_dtype
        self._schedule = schedule
        self._pp_group = pp_group

    # ------------------------------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        config: LlamaConfig,
        strategy: Strategy,
        *,
        seed: int = 0,
        recompute: str | None = None,
        compute_dtype: str = "float32",
        weights=None,
    ) -> ParallelModel:
        """Validate the layout, start the distributed environment if needed, build and place this
        rank's stage with weights drawn from ``seed`` (identical to the same model in one process).

        ``recompute``: None, "full" (each decoder layer) or "attention" (the attention block).
        ``compute_dtype``: "float32", or "bfloat16" (GPU only: autocast, parameters stay float32).
        ``weights``: a ``pretrained.PretrainedWeights`` to start from instead of random values; the
        stage is built without memory and each rank reads only the shards it holds.
        """
        check_backend_support(strategy, compute_dtype)
        plan.check_recompute(recompute)  # before any process group starts
        strategy.validate(config, world_size=world_size_from_env())
        if weights is not None:
            weights.check(config)
        rank = init_distributed(strategy)
        stage, dp_rank, mp_rank = strategy.coordinates(rank)
        with paddle.LazyGuard() if weights is not None else contextlib.nullcontext():
            module = build_stage(config, strategy, stage)
        plan.apply_recompute(module, recompute)
        if weights is None:
            module.init_weights(seed)
        elif strategy.world_size == 1:
            weights.fill(module)
        layout = _Layout(rank, stage, dp_rank, mp_rank)
        loss_fn = ScaledTokenLoss(IGNORE_INDEX)
        schedule = group = None
        if strategy.world_size > 1:
            mesh = strategy.build_mesh()
            dist.set_mesh(mesh)
            layout.mesh = mesh
            layout.stage_mesh = mesh.get_mesh_with_dim("pp", stage)
            plan.apply_plan(module, layout.stage_mesh)
            if weights is not None:
                weights.fill(module)
            if strategy.sequence_parallel:
                plan.apply_sequence_parallel(module, layout.stage_mesh)
            if strategy.pp > 1:
                group = pipeline_groups(mesh, strategy)[(dp_rank, mp_rank)]
                schedule = make_schedule(module, strategy, stage, group, loss_fn)
        return cls(config, strategy, module, layout, loss_fn, schedule, group, compute_dtype)

    # ---------------------------------------------------------------------------------- accessors
    @property
    def rank(self) -> int:
        return self.layout.rank

    @property
    def is_first_stage(self) -> bool:
        return self.layout.stage == 0

    @property
    def is_last_stage(self) -> bool:
        return self.layout.stage == self.strategy.pp - 1

    @property
    def distributed(self) -> bool:
        return self.strategy.world_size > 1

    def parameters(self):
        return self.module.parameters()

    def named_parameters(self):
        return self.module.named_parameters()

    def local_size(self) -> tuple[int, int]:
        """(elements, bytes) of the parameters this rank holds: its shards, not the global tensors."""
        elements = nbytes = 0
        for param in self.module.parameters():
            local = local_value(param)
            n = int(np.prod(local.shape, dtype=np.int64))
            elements += n
            nbytes += n * local.element_size()
        return elements, nbytes

    def state_dict(self, prefix: str = "") -> dict:
        """This rank's parameters under their full-model names (dist tensors when distributed), ready
        for ``dist.save_state_dict``; a trainer saves them with ``prefix="model."``."""
        return {prefix + name: p for name, p in self.module.named_parameters()}

    def load_state_dict(self, path: str, prefix: str = "") -> None:
        """Fill this rank's parameters in place from a ``dist.save_state_dict`` checkpoint saved under
        any layout (Paddle reshards on load)."""
        with gloo.loading_checkpoints():
            dist.load_state_dict(self.state_dict(prefix), path)

    def shard_optimizer(self, optimizer):
        """Wrap an optimizer built on ``parameters()`` for dist tensors (Paddle's ``dist.shard_optimizer``)."""
        if not self.distributed:
            return optimizer
        if static_engine.grad_clip_of(optimizer) is not None:
            raise LlamaModelError(
                "give the optimizer no grad_clip: use ParallelModel.clip_grad_norm (correct across stages)"
            )
        if self.strategy.sharding_stage:
            stage_cls = {1: dist.ShardingStage1, 2: dist.ShardingStage2, 3: dist.ShardingStage3}
            shard_fn = stage_cls[self.strategy.sharding_stage]("dp", self.layout.stage_mesh)
            return dist.shard_optimizer(optimizer, shard_fn)
        return dist.shard_optimizer(optimizer)

    # -------------------------------------------------------------------------------- the step
    def forward_backward(self, input_ids, labels) -> float:
        """Forward and backward over the global batch ([global_batch, seq] token ids and shifted
        labels, identical on every rank), split into ``strategy.micro_batches`` micro-batches and over
        dp. Gradients accumulate in the parameters; returns the step's mean token loss on every rank."""
        return read_floats(self.forward_backward_tensor(input_ids, labels))[0]

    def forward_backward_tensor(self, input_ids, labels):
        """``forward_backward`` without reading the loss: a float64 tensor of shape [1] on the
        device (a plain tensor, the same value on every rank); nothing in it waits for the device."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if input_ids.shape != labels.shape or input_ids.ndim != 2:
            raise LlamaModelError(
                f"input_ids {input_ids.shape} and labels {labels.shape} must both be [batch, seq]"
            )
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise LlamaModelError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings ({self.config.max_position_embeddings})"
            )
        self.strategy.validate_batch(input_ids.shape[0])
        if self.strategy.sequence_parallel and input_ids.shape[1] % self.strategy.mp:
            raise LlamaModelError(
                f"sequence_parallel needs seq ({input_ids.shape[1]}) divisible by mp{self.strategy.mp}"
            )
        self.loss_fn.set_num_valid_tokens(count_valid_tokens(labels))
        self.module.train()
        with self._autocast(), no_strided_views():
            if self._schedule is not None:
                local = self._pipeline_step(input_ids, labels)
            else:
                local = self._accumulation_step(input_ids, labels)
        return self._loss_on_every_rank(local)

    def evaluate(self, input_ids, labels) -> float:
        """The mean token loss of a global batch without gradients (same batch rules as
        ``forward_backward``); on every rank."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        self.strategy.validate_batch(input_ids.shape[0])
        scale = 1.0 / max(count_valid_tokens(labels), 1)
        micro = self.strategy.micro_batches
        self.module.eval()
        try:
            with paddle.no_grad(), self._autocast(), no_strided_views():
                if self._schedule is None:
                    local = paddle.add_n(
                        [
                            _local_scalar(
                                token_loss_sum(self.module(self._place(ids)), self._place(lab))
                            )
                            for ids, lab in zip(np.split(input_ids, micro), np.split(labels, micro))
                        ]
                    )
                else:
                    local = self._pipeline_eval(input_ids, labels)
        finally:
            self.module.train()
        if local is not None:
            local = local * scale
        return read_floats(self._loss_on_every_rank(local))[0]

    def _pipeline_eval(self, input_ids, labels):
        # A new forward-only schedule per call: a schedule's next step() clears the gradients of its
        # receive buffers, and Paddle 3.3.1 raises "Detected nullptr grad" on buffers that never had
        # one (no backward ran), so a forward-only schedule cannot be stepped twice.
        schedule = make_schedule(
            self.module, self.strategy, self.layout.stage, self._pp_group, loss_fn=None
        )
        if self.is_first_stage:
            schedule.step(self._place(input_ids))
            return None
        schedule.step()
        if not self.is_last_stage:
            return None
        # Split the labels exactly as the schedule split the inputs (and splits training targets):
        # a dp-sharded batch is cut within each rank's local rows, not along the global rows.
        chunks = pipelining.split_microbatches(self._place(labels), self.strategy.micro_batches)
        outputs = pipelining.last_stage_outputs(schedule)
        return paddle.add_n(
            [_local_scalar(token_loss_sum(out, lab)) for out, lab in zip(outputs, chunks)]
        )

    def _autocast(self):
        if self.compute_dtype == "float32":
            return contextlib.nullcontext()
        return paddle.amp.auto_cast(True, dtype=self.compute_dtype, level="O1")

    def _place(self, array):
        tensor = paddle.to_tensor(array)
        if not self.distributed:
            return tensor
        mesh = self.layout.stage_mesh
        return dist.shard_tensor(tensor, mesh, plan.data_placements(mesh.dim_names))

    def _accumulation_step(self, input_ids, labels):
        losses = []
        micro = self.strategy.micro_batches
        for ids, lab in zip(np.split(input_ids, micro), np.split(labels, micro)):
            loss = self.loss_fn(self.module(self._place(ids)), self._place(lab))
            loss.backward()
            losses.append(_local_scalar(loss.detach()))
        return paddle.add_n(losses)

    def _pipeline_step(self, input_ids, labels):
        if self.is_first_stage:
            self._schedule.step(self._place(input_ids))
            return None
        if not self.is_last_stage:
            self._schedule.step()
            return None
        losses: list = []
        self._schedule.step(target=self._place(labels), losses=losses)
        return paddle.add_n([_local_scalar(loss.detach()) for loss in losses])

    def _loss_on_every_rank(self, local):
        """The step's loss as a plain float64 [1] tensor on every rank (``local``: this rank's sum
        over micro-batches, a tensor or None where the rank has no loss)."""
        if self.strategy.pp == 1:
            return local
        # Only last-stage ranks know the loss; each of its dp×mp ranks holds the same value.
        value = local if local is not None else paddle.zeros([1], dtype="float64")
        dist.all_reduce(value)
        return value / (self.strategy.dp * self.strategy.mp)

    def to_static(self, optimizer, batch: int, seq: int, clip_norm: float = 0.0):
        """A compiled step (``static.StaticStep``) for global batches of shape [batch, seq] that
        clips gradients by the global norm ``clip_norm`` (0: no clipping) like ``clip_grad_norm``;
        refuses, with one line, the layouts Paddle cannot compile correctly on this backend."""
        from llama_model.static import StaticStep

        return StaticStep(self, optimizer, batch, seq, clip_norm=clip_norm)

    # ---------------------------------------------------------------------------- grad clipping
    def grad_norm(self) -> float:
        """The global L2 norm of all gradients of the model, across every stage and shard (one
        read of the device per call)."""
        return read_floats(self.grad_norm_tensor())[0]

    def grad_norm_tensor(self):
        """``grad_norm`` as a float64 [1] tensor on the device, the same on every rank: the squares
        are summed on the device (not read per parameter: on a GPU each read waits for the device)."""
        squares = [
            _local_squared_norm(param, param.grad)
            for param in self.module.parameters()
            if param.grad is not None
        ]
        total = paddle.add_n(squares) if squares else paddle.zeros([1], dtype="float64")
        if self.distributed:
            dist.all_reduce(total)
        return paddle.sqrt(total)

    def clip_grad_norm(self, max_norm: float, eps: float = 1e-6) -> float:
        """Scale every gradient by min(1, max_norm / (global norm + eps)); returns the norm before."""
        return read_floats(self.clip_grad_norm_tensor(max_norm, eps))[0]

    def clip_grad_norm_tensor(self, max_norm: float, eps: float = 1e-6):
        """``clip_grad_norm`` without reading the device: the coefficient is computed and applied
        there (1 when the norm is within bound, an exact multiply); returns the norm tensor."""
        norm = self.grad_norm_tensor()
        coef = paddle.clip(max_norm / (norm + eps), max=1.0)
        coef_as = {}  # the coefficient cast once per gradient dtype, not once per parameter
        with paddle.no_grad():
            for param in self.module.parameters():
                if param.grad is not None:
                    grad = local_value(param.grad)
                    if grad.dtype not in coef_as:
                        coef_as[grad.dtype] = coef.astype(grad.dtype)
                    grad.multiply_(coef_as[grad.dtype])
        return norm


def read_floats(*tensors) -> tuple[float, ...]:
    """The first element of each tensor as a Python float, read from the device in one transfer
    (the one host sync of a training step)."""
    flat = [t.reshape([-1])[:1].astype("float64") for t in tensors]
    values = paddle.concat(flat).numpy() if len(flat) > 1 else flat[0].numpy()
    return tuple(float(v) for v in values)


def _local_scalar(tensor):
    """A 0-d loss (a dist tensor when distributed) as a plain float64 [1] tensor on the device,
    holding the full value on every rank."""
    if tensor.is_dist():
        tensor = dist.reshard(
            tensor, tensor.process_mesh, [dist.Replicate()] * len(tensor.placements)
        )
    return local_value(tensor).astype("float64").reshape([1])


def _local_squared_norm(param, grad):
    """This rank's share of ||grad||² as a float64 tensor of shape [1] on the device, counting each
    element of the global gradient exactly once over the ranks of the stage: a shard counts fully,
    a replica counts 1/(number of replicas)."""
    if not grad.is_dist():
        return paddle.square(grad.astype("float64")).sum().reshape([1])
    if any(p.is_partial() for p in grad.placements):
        grad = dist.reshard(grad, grad.process_mesh, param.placements)
    replicas = 1
    for size, placement in zip(grad.process_mesh.shape, grad.placements):
        if placement.is_replicated():
            replicas *= size
    local = local_value(grad).astype("float64")
    # square, not ** 2: Paddle's pow kernel calls std::pow per element, several times slower on CPU
    return paddle.square(local).sum().reshape([1]) / replicas

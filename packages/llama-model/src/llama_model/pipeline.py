"""Pipeline parallelism: which layers a stage owns, building that stage, and the schedule that runs it.

Each rank builds only its own stage (``build_stage``): a ``LlamaForCausalLM`` holding a contiguous range
of decoder layers, the embedding on the first stage, the final norm and head on the last. Stages talk
through ``paddle.distributed.auto_parallel.pipelining`` (``PipelineStage`` + ``ScheduleFThenB`` /
``Schedule1F1B``) over one point-to-point group per (dp, mp) coordinate.

Under the interleaved schedule (VPP, ``ScheduleVPP``) the layers are cut into pp × v chunks and rank r
runs chunks r, r + pp, ...: its stage module still holds all of its layers (under their full-model
names, for checkpoints and the optimizer), and each chunk is a ``PipelineChunk`` view that runs a
slice of them with the same parameters.

The schedules add up the loss_fn results of the micro-batches without dividing by their number; the
loss_fn used here (``loss.ScaledTokenLoss``) already divides each micro-batch's token-loss sum by the
number of valid tokens in the whole global batch, so the accumulated gradient is that of the global
mean token loss.
"""

from __future__ import annotations

import numpy as np

from llama_model._paddle import paddle
from llama_model.config import LlamaConfig
from llama_model.model import LlamaForCausalLM
from llama_model.paddle_compat import gloo, pipelining
from llama_model.strategy import Strategy

dist = paddle.distributed


def build_stage(config: LlamaConfig, strategy: Strategy, stage: int):
    """The (unplaced) module of pipeline stage ``stage``; the whole model when pp == 1."""
    layers = strategy.layer_split(config.num_hidden_layers)[stage]
    return LlamaForCausalLM(
        config, layer_ids=layers, first=stage == 0, last=stage == strategy.pp - 1
    )


def needs_buffered_p2p(strategy: Strategy) -> bool:
    """Whether the schedule sends in an order that blocking gloo sends deadlock on (paddle_compat.gloo)."""
    return strategy.schedule == "VPP" or strategy.pp > 2


def pipeline_groups(mesh, strategy: Strategy) -> dict[tuple[int, int], object]:
    """One p2p group per (dp, mp) coordinate, joining that coordinate's ranks across stages.

    ``mesh.get_group("pp")`` would create only the caller's group, and disjoint gloo groups must be
    created by every rank in one order (paddle_compat.gloo, defect 2); so all of them are made here.
    """
    ranks = np.array(mesh.mesh)  # [pp, dp, mp]
    coords = [(d, m) for d in range(ranks.shape[1]) for m in range(ranks.shape[2])]
    rank_lists = [ranks[:, d, m].tolist() for d, m in coords]
    if needs_buffered_p2p(strategy) and gloo.is_gloo():
        groups = gloo.socket_p2p_groups(rank_lists)
    else:
        groups = gloo.new_groups_in_order(rank_lists)
    return dict(zip(coords, groups))


class PipelineChunk(paddle.nn.Layer):
    """One VPP chunk of a stage module: some of its decoder layers, with the embedding on the first
    chunk and the final norm and head on the last, sharing the stage module's parameters."""

    def __init__(self, stage_module, layer_ids, first: bool, last: bool):
        super().__init__()
        llama = stage_module.llama
        self.embed_tokens = llama.embed_tokens if first else None
        self.layers = paddle.nn.LayerList([llama.layers[str(i)] for i in layer_ids])
        self.norm = llama.norm if last else None
        self.lm_head = stage_module.lm_head if last else None
        self.rotary_emb = llama.rotary_emb

    def forward(self, x):
        if self.embed_tokens is not None:
            x = self.embed_tokens(x)
        cos, sin = self.rotary_emb(x.shape[1])
        for layer in self.layers:
            x = layer(x, cos, sin)
        if self.norm is not None:
            x = self.lm_head(self.norm(x))
        return x


def make_schedule(stage_module, strategy: Strategy, stage: int, group, loss_fn=None):
    """The training schedule (with ``loss_fn``), or, without one, a forward-only schedule whose last
    stage keeps each micro-batch's output (evaluation): FThenB, or VPP's own under VPP."""
    classes = pipelining.schedules()
    PipelineStage, ScheduleFThenB, ScheduleVPP = classes["stage"], classes["FThenB"], classes["VPP"]
    if needs_buffered_p2p(strategy):
        gloo.use_socket_p2p()  # no-op on NCCL
    if strategy.schedule == "VPP":
        layers = strategy.chunk_layers(stage_module.config.num_hidden_layers)
        stages = [
            PipelineStage(
                PipelineChunk(stage_module, layers[c], c == 0, c == strategy.chunks - 1),
                c,
                strategy.chunks,
                group=group,
            )
            for c in strategy.stage_chunks(stage)
        ]
        if loss_fn is None:
            schedule = ScheduleVPP(stages, strategy.micro_batches, loss_fn=lambda out, t: None)
            return pipelining.forward_only(schedule, stages)
        return ScheduleVPP(stages, n_microbatches=strategy.micro_batches, loss_fn=loss_fn)
    pipeline_stage = PipelineStage(stage_module, stage, strategy.pp, group=group)
    if loss_fn is None:
        # The schedule calls loss_fn once while sizing its buffers, even without a backward pass;
        # a no-op loss plus has_backward=False gives a forward-only schedule.
        schedule = ScheduleFThenB(
            pipeline_stage, strategy.micro_batches, loss_fn=lambda out, target: None
        )
        return pipelining.forward_only(schedule, [pipeline_stage])
    schedule_cls = classes[strategy.schedule]  # FThenB or 1F1B
    return schedule_cls(pipeline_stage, n_microbatches=strategy.micro_batches, loss_fn=loss_fn)

"""Pipeline parallelism: which layers a stage owns, building that stage, and the schedule that runs it.

Each rank builds only its own stage (``build_stage``): a ``LlamaForCausalLM`` holding a contiguous range
of decoder layers, the embedding on the first stage, the final norm and head on the last. Stages talk
through ``paddle.distributed.auto_parallel.pipelining`` (``PipelineStage`` + ``ScheduleFThenB`` /
``Schedule1F1B``) over one point-to-point group per (dp, mp) coordinate.

The schedules add up the loss_fn results of the micro-batches without dividing by their number; the
loss_fn used here (``loss.ScaledTokenLoss``) already divides each micro-batch's token-loss sum by the
number of valid tokens in the whole global batch, so the accumulated gradient is that of the global
mean token loss.
"""

from __future__ import annotations

import numpy as np

from llama_model import gloo_compat
from llama_model._paddle import paddle
from llama_model.config import LlamaConfig
from llama_model.model import LlamaForCausalLM
from llama_model.strategy import Strategy

dist = paddle.distributed


def build_stage(config: LlamaConfig, strategy: Strategy, stage: int, recompute: str | None = None):
    """The (unplaced) module of pipeline stage ``stage``; the whole model when pp == 1."""
    layers = strategy.layer_split(config.num_hidden_layers)[stage]
    return LlamaForCausalLM(
        config,
        layer_ids=layers,
        first=stage == 0,
        last=stage == strategy.pp - 1,
        recompute=recompute,
    )


def pipeline_groups(mesh) -> dict[tuple[int, int], object]:
    """One p2p group per (dp, mp) coordinate, joining that coordinate's ranks across stages.

    ``mesh.get_group("pp")`` would create only the caller's group, and disjoint gloo groups must be
    created by every rank in one order (gloo_compat, defect 2); so all of them are made here.
    """
    ranks = np.array(mesh.mesh)  # [pp, dp, mp]
    coords = [(d, m) for d in range(ranks.shape[1]) for m in range(ranks.shape[2])]
    groups = gloo_compat.new_groups_in_order([ranks[:, d, m].tolist() for d, m in coords])
    return dict(zip(coords, groups))


def make_schedule(stage_module, strategy: Strategy, stage: int, group, loss_fn=None):
    """The training schedule (with ``loss_fn``), or, without one, a forward-only FThenB schedule
    whose last stage keeps each micro-batch's output (evaluation)."""
    from paddle.distributed.auto_parallel.pipelining.schedules import Schedule1F1B, ScheduleFThenB
    from paddle.distributed.auto_parallel.pipelining.stage import PipelineStage

    pipeline_stage = PipelineStage(stage_module, stage, strategy.pp, group=group)
    if loss_fn is None:
        # The schedule calls loss_fn once while sizing its buffers, even without a backward pass;
        # a no-op loss plus has_backward=False gives a forward-only schedule.
        schedule = ScheduleFThenB(
            pipeline_stage, strategy.micro_batches, loss_fn=lambda out, target: None
        )
        schedule._has_backward = pipeline_stage.has_backward = False
        return schedule
    schedule_cls = {"FThenB": ScheduleFThenB, "1F1B": Schedule1F1B}[strategy.schedule]
    return schedule_cls(pipeline_stage, n_microbatches=strategy.micro_batches, loss_fn=loss_fn)

"""Paddle's pipelining schedules (``paddle.distributed.auto_parallel.pipelining``, which
``paddle.distributed`` does not export): the stage and schedule classes, the micro-batch split, the
last stage's outputs, a forward-only run. Verified for Paddle 3.3."""

from __future__ import annotations

VERIFIED_FOR = ("3.3",)


def schedules() -> dict:
    """``PipelineStage`` and the schedule classes by name (``FThenB``, ``1F1B``, ``VPP``)."""
    from paddle.distributed.auto_parallel.pipelining.schedules import (
        Schedule1F1B,
        ScheduleFThenB,
        ScheduleVPP,
    )
    from paddle.distributed.auto_parallel.pipelining.stage import PipelineStage

    return {"stage": PipelineStage, "FThenB": ScheduleFThenB, "1F1B": Schedule1F1B,
            "VPP": ScheduleVPP}  # fmt: skip


def split_microbatches(tensor, chunks: int) -> list:
    """Split a batch into ``chunks`` micro-batches exactly as the schedules split their inputs (a
    dp-sharded batch within each rank's local rows)."""
    from paddle.distributed.auto_parallel.pipelining.microbatch import _split_tensor

    return _split_tensor(tensor, chunks)


def last_stage_outputs(schedule) -> list:
    """The last chunk's per-micro-batch outputs of a forward-only schedule (on the last stage)."""
    stages = getattr(schedule, "_stages", None) or [schedule._stage]
    return next(stage.output_chunks for stage in stages if stage.is_last)


def forward_only(schedule, stages):
    """Make ``schedule`` (and its ``stages``) run forward actions only. The schedule calls its
    loss_fn once while sizing its buffers even so: give it a no-op loss."""
    schedule._has_backward = False
    for stage in stages:
        stage.has_backward = False
    order = getattr(schedule, "pipeline_order", None)
    if order:  # a multi-stage schedule plans its backward actions whatever has_backward says
        from paddle.distributed.auto_parallel.pipelining.schedules import _ActType

        schedule.pipeline_order = {
            rank: [a if a is None or a.computation_type == _ActType.FORWARD else None for a in acts]
            for rank, acts in order.items()
        }
    return schedule

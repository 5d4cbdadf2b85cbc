"""``--strategy auto --devices N``: every layout of N devices the model and the batch allow, the
ones that fit, ranked by estimated step time (each dp × mp × pp once, as its fastest variant; the
least memory among equally fast ones).

A layout is dp × mp × pp = N with mp dividing the heads, the key/value heads, the MLP width and
the vocabulary, pp dividing the layers (an even split), dp × micro-batch size dividing the global
batch; for each, every ZeRO sharding stage (dp > 1), sequence parallelism on and off (mp > 1, the
sequence divisible by mp) and recompute off, "attention" and "full". The pipeline schedule is the
one asked where the layout allows it (VPP needs pp > 1, micro-batches a multiple of pp and layers
in whole chunks), else 1F1B. On a CPU only what its Paddle runs is tried (no SP, no sharding).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from llama_model import LlamaModelError, Strategy
from llama_train.plan.estimate import Plan, make_plan
from llama_train.plan.job import Job

RECOMPUTES = (None, "attention", "full")


def _degrees(devices: int) -> Iterator[tuple[int, int, int]]:
    for mp in range(1, devices + 1):
        if devices % mp:
            continue
        for pp in range(1, devices // mp + 1):
            if (devices // mp) % pp == 0:
                yield devices // (mp * pp), mp, pp


def layouts(base: Job, devices: int, global_batch: int, schedule=("1F1B", 1)) -> Iterator[Job]:
    """Every layout of ``devices`` for ``base``'s model, micro-batch and sequence (see above);
    ``schedule``: the pipeline schedule asked and its VPP degree."""
    cfg, (asked, asked_vpp) = base.config, schedule
    gpu = base.device.gpu
    for dp, mp, pp in _degrees(devices):
        per_pass = base.micro_batch_size * dp
        if global_batch % per_pass or cfg.num_hidden_layers % pp:
            continue
        micro_batches = global_batch // per_pass
        pipeline = {"schedule": "1F1B", "virtual_pp_degree": 1}
        if asked != "VPP" and pp > 1:
            pipeline["schedule"] = asked
        elif asked == "VPP" and pp > 1:
            chunks = pp * asked_vpp
            if micro_batches % pp == 0 and cfg.num_hidden_layers % chunks == 0:
                pipeline = {"schedule": "VPP", "virtual_pp_degree": asked_vpp}
        for zero in range(4) if dp > 1 and gpu else (0,):
            for sp in (False, True) if mp > 1 and gpu and base.seq_len % mp == 0 else (False,):
                try:
                    strategy = Strategy(dp=dp, mp=mp, pp=pp, micro_batches=micro_batches,
                                        sequence_parallel=sp, sharding_stage=zero, **pipeline)  # fmt: skip
                    strategy.validate(cfg, global_batch=global_batch)
                except LlamaModelError:
                    continue
                for recompute in RECOMPUTES:
                    yield dataclasses.replace(base, strategy=strategy, recompute=recompute)


@dataclasses.dataclass(frozen=True)
class Ranking:
    considered: int  # layouts, with every sharding stage, SP and recompute variant
    fitting: int  # of those, the ones that fit
    best: list[Plan]  # the fastest fitting variant of each dp × mp × pp, fastest first


def rank_layouts(
    base: Job, devices: int, global_batch: int, schedule, mfu: float, peak_tflops=None
) -> Ranking:
    jobs = layouts(base, devices, global_batch, schedule)
    plans = [make_plan(job, mfu, peak_tflops) for job in jobs]
    fitting = [plan for plan in plans if plan.fits]

    def speed(plan: Plan):
        # without a known peak (a CPU without --peak-tflops) the FLOPs of the slowest rank
        total = plan.time.total
        return (total if total is not None else plan.time.flops_per_rank, plan.largest_rank.total)

    ranked, seen = [], set()
    for plan in sorted(fitting, key=speed):  # each dp × mp × pp once: its fastest variant
        s = plan.job.strategy
        if (s.dp, s.mp, s.pp) not in seen:
            seen.add((s.dp, s.mp, s.pp))
            ranked.append(plan)
    return Ranking(len(plans), len(fitting), ranked)

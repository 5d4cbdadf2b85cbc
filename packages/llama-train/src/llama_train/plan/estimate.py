"""A plan: each rank's memory and the step's time for one layout, and its JSON form."""

from __future__ import annotations

from dataclasses import dataclass

from llama_train.plan import step_time
from llama_train.plan.job import Job
from llama_train.plan.ranks import StageMemory, plan_memory

DEFAULT_MFU = 0.4  # the assumed model FLOPs utilisation of the step time (--mfu)


@dataclass(frozen=True)
class Plan:
    job: Job
    stages: list[StageMemory]
    time: step_time.StepTime
    mfu: float

    @property
    def fits(self) -> bool:
        return all(stage.fits for stage in self.stages)

    @property
    def largest_rank(self) -> StageMemory:
        """The stage whose ranks need the most memory."""
        return max(self.stages, key=lambda stage: stage.total)

    @property
    def tokens_per_s(self) -> float | None:
        total = self.time.total
        return None if not total else self.job.global_batch * self.job.seq_len / total

    def to_json(self) -> dict:
        job, strategy = self.job, self.job.strategy
        ranks = []
        for stage in self.stages:
            for rank in stage.ranks:
                pp, dp, mp = strategy.coordinates(rank)
                ranks.append({
                    "rank": rank,
                    "coordinates": {"pp": pp, "dp": dp, "mp": mp},
                    "parameters": stage.parameters,
                    "bytes": dict(stage.bytes),
                    "activations_per_micro_batch": stage.activations_per_micro_batch,
                    "micro_batches_in_flight": {str(c): n for c, n in stage.in_flight.items()},
                    "fits": stage.fits,
                    "largest_term": stage.largest,
                })  # fmt: skip
        return {
            "strategy": str(strategy),
            "layout": {
                **strategy.to_dict(),
                "micro_batch_size": job.micro_batch_size,
                "global_batch_size": job.global_batch,
                "seq_len": job.seq_len,
                "recompute": job.recompute,
                "compute_dtype": job.compute_dtype,
            },
            "device": {
                "name": job.device.name,
                "memory_bytes": job.device.memory_bytes,
                "memory_per_rank_bytes": self.stages[0].budget,
                "intra_node_gbps": job.device.intra_node_gbps,
                "inter_node_gbps": job.device.inter_node_gbps,
                "per_node": job.device.per_node,
            },
            "kernels": job.kernels,
            "ranks": ranks,
            "activation_terms_per_micro_batch": [
                {"stage": stage.stage, "terms": stage.activation_terms} for stage in self.stages
            ],
            "fits": self.fits,
            "step_time_s": self.time.total,
            "step_time": self.time.as_dict(),
            "assumed_mfu": self.mfu,
            "flops_per_rank": self.time.flops_per_rank,
            "tokens_per_s": self.tokens_per_s,
        }


def make_plan(job: Job, mfu: float = DEFAULT_MFU, peak_tflops: float | None = None) -> Plan:
    return Plan(job, plan_memory(job), step_time.estimate(job, mfu, peak_tflops), mfu)

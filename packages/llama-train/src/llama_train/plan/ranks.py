"""Each rank's memory: its states, the activations its schedule keeps, its buffers and a reserve.

Per rank of pipeline stage r (every mp and dp rank of a stage holds the same shapes; under ZeRO
sharding the first dp ranks hold the ⌈⌉ share, which is the one reported):

* parameters: 4 bytes per element of its shards (float32: the model keeps float32 parameters also
  under --amp bf16, which casts per operation); ÷ dp under sharding stage 3;
* gradients: 4 bytes per element; ÷ dp under stage ≥ 2;
* optimizer: AdamW's two float32 moments, 8 bytes per element, ÷ dp under stage ≥ 1, plus its two
  float32 beta powers per parameter tensor; no master weights (the parameters are float32);
* activations: one micro-batch's saved tensors per chunk (``activations.py``) times the
  micro-batches alive at once (``schedule.py``);
* logits and loss buffers (last stage): the logits of one micro-batch in the compute dtype, their
  float32 copy under bf16, the whole vocabulary's float32 logits that the loss gathers over mp, and
  their gradient, alive while its loss runs forward and back;
* recompute working set: backward rebuilds one recomputed block at a time;
* communication buffers: a pipeline stage allocates, per chunk, one receive buffer per
  micro-batch for its input (all but the first chunk) and one for the gradient of its output (all
  but the last): Paddle's ``PipelineStage._prepare_forward_infra`` / ``_prepare_backward_infra``;
* reserve: on a GPU, 1 GiB (CUDA context, cuBLAS workspaces, NCCL communicators) plus 5 % of the
  rest (the caching allocator's fragmentation), stated, not measured; on a CPU, Paddle and its
  process group, 0.3 GiB per process (llama-model's README measures 0.29 GiB).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from llama_train.plan import activations
from llama_train.plan.devices import GIB
from llama_train.plan.job import Job
from llama_train.plan.parameters import stage_tensors
from llama_train.plan.schedule import peak_in_flight

F32 = 4
GPU_RESERVE = 1 * GIB
GPU_FRAGMENTATION = 0.05
CPU_RESERVE = int(0.3 * GIB)

TERMS = ("parameters", "gradients", "optimizer", "activations", "logits", "recompute",
         "communication", "reserve")  # fmt: skip
TERM_NAMES = {
    "logits": "logits and loss buffers",
    "recompute": "recompute working set",
    "communication": "communication buffers",
}
THE = {
    "parameters": "the parameters", "gradients": "the gradients",
    "optimizer": "the optimizer state", "activations": "the activations",
    "logits": "the logits and loss buffers", "recompute": "the recompute working set",
    "communication": "the communication buffers", "reserve": "the reserve",
}  # fmt: skip


@dataclass(frozen=True)
class StageMemory:
    """What each rank of one pipeline stage holds (bytes unless said)."""

    stage: int
    ranks: tuple[int, ...]
    parameters: int  # elements of its parameter shards
    bytes: dict[str, int]
    activations_per_micro_batch: int
    activation_terms: dict[str, int]  # one micro-batch, all chunks of the stage
    in_flight: Counter = field(default_factory=Counter)  # chunk -> micro-batches alive at the peak
    budget: int = 0  # the device memory one rank may use

    @property
    def total(self) -> int:
        return self.bytes["total"]

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    @property
    def largest(self) -> str:
        """The largest term (a key of ``bytes``)."""
        return max(TERMS, key=lambda term: self.bytes[term])


def budget_per_rank(job: Job) -> int:
    """One rank's memory: a GPU's own, or this machine's shared by the ranks it runs."""
    if job.device.gpu:
        return job.device.memory_bytes
    return job.device.memory_bytes // min(job.strategy.world_size, job.device.per_node)


def stage_memory(job: Job, stage: int) -> StageMemory:
    strategy, config = job.strategy, job.config
    dp, zero = strategy.dp, strategy.sharding_stage
    tensors = stage_tensors(config, strategy, stage)
    whole = sum(t.elements for t in tensors)
    sharded = sum(t.sharded_elements(dp) for t in tensors)
    chunks = strategy.stage_chunks(stage)
    per_chunk = {c: activations.chunk(job, c) for c in chunks}
    chunk_bytes = {c: sum(terms.values()) for c, terms in per_chunk.items()}
    held, in_flight = peak_in_flight(strategy, stage, chunk_bytes)
    b, s, h = job.micro_batch_size, job.seq_len, config.hidden_size
    last = strategy.chunks - 1 in chunks
    logits = 0
    if last:  # the rank's logits, their float32 copy under bf16, then the whole vocabulary's
        # (gathered over mp for the loss) and its gradient
        vocab, local = config.vocab_size, config.vocab_size // strategy.mp
        cast = local * F32 if job.compute_bytes != F32 else 0
        logits = b * s * (local * job.compute_bytes + cast + 2 * vocab * F32)
    boundary = activations.residual_rows(job) * h * F32  # the residual stream between chunks
    receives = sum((c > 0) + (c < strategy.chunks - 1) for c in chunks) if strategy.pp > 1 else 0
    terms = {
        "parameters": F32 * (sharded if zero >= 3 else whole),
        "gradients": F32 * (sharded if zero >= 2 else whole),
        "optimizer": 2 * F32 * (sharded if zero >= 1 else whole) + 2 * F32 * len(tensors),
        "activations": held,
        "logits": logits,
        "recompute": activations.recompute_working_set(job),
        "communication": receives * strategy.micro_batches * boundary,
    }
    rest = sum(terms.values())
    if job.device.gpu:
        terms["reserve"] = GPU_RESERVE + int(GPU_FRAGMENTATION * rest)
    else:
        terms["reserve"] = CPU_RESERVE
    terms["total"] = sum(terms.values())
    merged: dict[str, int] = {}
    for chunk_terms in per_chunk.values():
        for name, n in chunk_terms.items():
            merged[name] = merged.get(name, 0) + n
    per_stage = strategy.dp * strategy.mp
    ranks = tuple(range(stage * per_stage, (stage + 1) * per_stage))
    return StageMemory(stage, ranks, whole, terms, sum(chunk_bytes.values()), merged, in_flight,
                       budget_per_rank(job))  # fmt: skip


def plan_memory(job: Job) -> list[StageMemory]:
    return [stage_memory(job, stage) for stage in range(job.strategy.pp)]

"""An estimate of one optimizer step's time: compute, the pipeline bubble, exposed communication.

* compute: the FLOPs of one micro-batch on the slowest stage (its matmul weights, 2 FLOPs per
  multiply-add, forward 1×, backward 2×, plus the forward again for what recompute rebuilds; the
  attention scores and weighted sum, 4·s·(h/t) per token and layer forward; the PaLM convention of
  the MFU line: the causal mask is not discounted), over the device's dense peak in the compute
  dtype (the MFU table's) times an assumed MFU, times the m micro-batches;
* bubble: (pp − 1) / v of those micro-batch times (the fill and drain of 1F1B and FThenB; VPP
  divides it by its v chunks);
* exposed communication, nothing assumed to overlap (the eager step waits on each):
  - mp: an all-reduce of b·s·h values in the compute dtype after attention and after the MLP
    forward, and one for the gradient of their replicated inputs backward (4 per layer, 2 more
    per layer of full recompute, 1 of attention recompute, 1 for the head's input); under
    sequence parallelism each becomes an all-gather and a reduce-scatter, the same bytes. A ring
    all-reduce of X bytes over t ranks moves 2·(t−1)/t·X per rank;
  - dp: the gradients' reduction once per step, 2·(d−1)/d·G for G float32 gradient bytes (an
    all-reduce; sharding's reduce-scatter plus the parameters' all-gather moves the same), and
    under sharding stage 3 the parameters gathered again for every micro-batch's forward and
    backward, 2·m·(d−1)/d·P;
  - pp: each micro-batch's activation sent forward and its gradient sent back, b·s·h float32
    values, per chunk boundary a rank has (the schedules wait for each receive);
  over the intra-node link when the group's ranks share a node (the mesh is [pp, dp, mp], mp
  innermost), the inter-node one otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from llama_train.plan.activations import residual_rows
from llama_train.plan.job import Job
from llama_train.plan.parameters import stage_tensors

F32 = 4


@dataclass(frozen=True)
class StepTime:
    """Seconds per optimizer step, by term; ``total`` None when the device has no known peak."""

    compute: float | None
    bubble: float | None
    mp: float
    dp: float
    pp: float
    flops_per_rank: float  # the slowest stage's, per step (with recompute)

    @property
    def total(self) -> float | None:
        if self.compute is None:
            return None
        return self.compute + self.bubble + self.mp + self.dp + self.pp

    def as_dict(self) -> dict:
        return {"compute": self.compute, "bubble": self.bubble, "mp_communication": self.mp,
                "dp_communication": self.dp, "pp_communication": self.pp}  # fmt: skip


def micro_batch_flops(job: Job, stage: int) -> float:
    """FLOPs of one micro-batch's forward and backward on a rank of ``stage``."""
    cfg, strategy = job.config, job.strategy
    tokens = job.micro_batch_size * job.seq_len
    tensors = stage_tensors(cfg, strategy, stage)
    layer_weights = sum(t.elements for t in tensors if t.matmul and t.layer is not None)
    head = sum(t.elements for t in tensors if t.matmul and t.layer is None)
    if cfg.tie_word_embeddings and stage == strategy.pp - 1:
        head += cfg.vocab_size * cfg.hidden_size
    layers = len({t.layer for t in tensors if t.layer is not None})
    scores = 4 * job.seq_len * cfg.hidden_size // strategy.mp  # per token and layer, forward
    forward_layers = 2 * layer_weights + layers * scores
    flops = 3 * (forward_layers + 2 * head)
    if job.recompute == "full":
        flops += forward_layers
    elif job.recompute == "attention":
        attention = sum(t.elements for t in tensors if t.matmul and "self_attn" in t.name)
        flops += 2 * attention + layers * scores
    return flops * tokens


def _ring(bytes_: float, ranks: int, gbps: float) -> float:
    """Seconds of a ring all-reduce of ``bytes_`` over ``ranks`` at ``gbps`` GB/s per direction."""
    return 0.0 if ranks == 1 else 2 * (ranks - 1) / ranks * bytes_ / (gbps * 1e9)


def _link(job: Job, span: int) -> float:
    """The bandwidth of a group whose ranks lie within ``span`` consecutive ranks."""
    return job.device.intra_node_gbps if span <= job.device.per_node else job.device.inter_node_gbps


def estimate(job: Job, mfu: float, peak_tflops: float | None = None) -> StepTime:
    """The step time of ``job`` at the assumed ``mfu`` (``peak_tflops``: --peak-tflops)."""
    cfg, strategy = job.config, job.strategy
    t, d, pp, m = strategy.mp, strategy.dp, strategy.pp, strategy.micro_batches
    v = strategy.virtual_pp_degree
    per_stage = [micro_batch_flops(job, stage) for stage in range(pp)]
    slowest = max(per_stage)
    peak = job.device.peak_flops(job.compute_dtype, peak_tflops)
    compute = bubble = None
    if peak is not None:
        micro = slowest / (peak * mfu)
        compute, bubble = m * micro, (pp - 1) / v * micro
    # mp: per layer 4 all-reduces (2 forward, 2 backward), recompute's forward again, the head
    layers = max(len(layer_ids) for layer_ids in strategy.layer_split(cfg.num_hidden_layers))
    per_layer = 4 + {"full": 2, "attention": 1}.get(job.recompute or "", 0)
    activation = job.micro_batch_size * job.seq_len * cfg.hidden_size * job.compute_bytes
    mp_time = m * (per_layer * layers + 1) * _ring(activation, t, _link(job, t))
    # dp: the gradients once per step (the largest stage's), parameters per micro-batch at stage 3
    grads = F32 * max(sum(x.elements for x in stage_tensors(cfg, strategy, s)) for s in range(pp))
    dp_link = _link(job, t * d)
    dp_time = _ring(grads, d, dp_link)
    if strategy.sharding_stage >= 3:  # an all-gather (half an all-reduce) forward and backward
        dp_time += m * _ring(grads, d, dp_link)
    # pp: per micro-batch and chunk, the activation forward and its gradient back
    boundary = residual_rows(job) * cfg.hidden_size * F32
    pp_time = 0.0
    if pp > 1:
        pp_time = 2 * m * v * boundary / (_link(job, strategy.world_size) * 1e9)
    return StepTime(compute, bubble, mp_time, dp_time, pp_time, m * slowest)

"""The bytes one micro-batch leaves saved for backward, per layer and per pipeline chunk.

Counted the way ``--check`` measures them (``measure.py``): every storage an operator saves for
its backward (or a recomputed block keeps as its arguments), once, parameters and buffers left
out. Each term below is a tensor of the model's code (``llama_model.model``, ``functional``,
``kernels``) with the operator that saves it; the README's "Planning a layout" writes them as
formulas beside Korthikanti et al.'s.

Shapes on one rank (mp degree t): b micro-batch, s sequence, h hidden, i MLP width, a heads, k
key/value heads, d head dim; the rank holds a/t heads, k/t key/value heads and i/t of the MLP.
Under sequence parallelism the norms and the residual stream hold s/t of the sequence, and the
gathered inputs of attention and the MLP are whole. Sizes: float32 for the residual stream, the
norms' statistics and the loss (the parameters stay float32 and the residual adds promote), the
compute dtype (``c``: 4, or 2 under --amp bf16) for what the matrix products read and write.
"""

from __future__ import annotations

from llama_train.plan.job import LLAMA_OPS, Job
from llama_train.plan.parameters import chunk_tensors

F32, I64 = 4, 8
FLASH_BLOCK = 128  # flash attention's softmax statistics are padded to whole blocks of queries


def _shapes(job: Job):
    cfg, t = job.config, job.strategy.mp
    return (
        job.micro_batch_size,
        job.seq_len,
        cfg.hidden_size,
        cfg.hidden_size // t,  # q width: a/t heads × d
        cfg.num_key_value_heads * cfg.head_dim // t,
        cfg.intermediate_size // t,
        cfg.num_attention_heads // t,
        job.compute_bytes,
    )


def residual_rows(job: Job) -> int:
    """Rows (tokens) of the residual stream on a rank: b·s, or b·s/t under sequence parallelism."""
    b, s = job.micro_batch_size, job.seq_len
    return b * s // job.strategy.mp if job.strategy.sequence_parallel else b * s


def norm(job: Job, what: str) -> dict[str, int]:
    """An RMSNorm: its input, and what its backward reads besides. llama-ops' kernel saves the
    per-row inverse RMS; plain Paddle's x·rsqrt(mean(x²)+ε)·w saves rsqrt's [rows, 1] output and
    the product x·rsqrt."""
    rows, h = residual_rows(job), job.config.hidden_size
    terms = {f"{what} input": rows * h * F32, f"{what} statistics": rows * F32}
    if job.kernels != LLAMA_OPS:
        terms[f"{what} x·rsqrt"] = rows * h * F32
    elif job.strategy.world_size > 1 and (job.strategy.dp > 1 or job.micro_batch_size > 1):
        # on rows split over a mesh axis llama-ops hands its kernel a copy of the weight, whose
        # gradient it labels a partial sum (llama_ops._local._SumGradOver)
        terms[f"{what} weight copy"] = h * F32
    return terms


def _first_norm_copies_alone(job: Job) -> bool:
    """A batch of one row on a dp1 mesh is placed split on the dp axis (of size one) up to the
    first norm, whose llama-ops outputs are labelled whole (an axis of size one is never split):
    only that norm copies its weight, and only when no recompute runs it."""
    strategy = job.strategy
    return (job.kernels == LLAMA_OPS and strategy.world_size > 1 and strategy.dp == 1
            and job.micro_batch_size == 1 and job.recompute is None)  # fmt: skip


def attention_block(job: Job) -> dict[str, int]:
    """input_layernorm and self_attn of one decoder layer."""
    b, s, h, hq, hk, _, heads, c = _shapes(job)
    rows = b * s
    terms = norm(job, "attention norm")
    terms["q/k/v input (norm output)"] = rows * h * c
    if job.kernels != LLAMA_OPS:  # q·cos + roll(q)·sin saves q and roll(q), k and roll(k)
        terms["rotary inputs and rolls"] = 2 * rows * (hq + hk) * c
        if job.expanded_rope_tables:  # the tables expanded to q's and k's shape, kept
            terms["rotary tables expanded"] = 2 * rows * (hq + hk) * F32
        else:  # sin × sign, made per layer; cos is the chunk's slice (chunk_extras)
            terms["rotary sin·sign"] = s * job.config.head_dim * F32
    if job.flash_attention:  # it saves q, k, v, its output and the softmax's log-sum-exp
        terms["flash attention q, k, v"] = rows * (hq + 2 * hk) * c
        terms["flash attention softmax statistics"] = b * heads * _round_up(s, FLASH_BLOCK) * F32
    else:  # q kᵀ saves q and k, softmax its output, probs·v the probabilities and v (k and v
        # expanded to every query head under grouped-query attention)
        terms["q, k, v (per query head)"] = 3 * rows * hq * c
        terms["attention probabilities"] = b * heads * s * s * c
    terms["attention output (o_proj input)"] = rows * hq * c
    return terms


def mlp_block(job: Job) -> dict[str, int]:
    """post_attention_layernorm and the SwiGLU MLP of one decoder layer."""
    b, s, h, _, _, inner, _, c = _shapes(job)
    rows = b * s
    terms = norm(job, "MLP norm")
    terms["gate/up input (norm output)"] = rows * h * c
    # llama-ops' swiglu saves gate and up; plain silu(gate)·up saves gate, silu(gate) and up
    terms["gate, up" if job.kernels == LLAMA_OPS else "gate, silu(gate), up"] = (
        (2 if job.kernels == LLAMA_OPS else 3) * rows * inner * c
    )
    terms["down input (SwiGLU output)"] = rows * inner * c
    return terms


def layer(job: Job) -> dict[str, int]:
    """One decoder layer, as recomputation leaves it: whole, or only the layer's input (kept by
    the recompute as its argument) and, for "attention", the MLP half."""
    if job.recompute is None:
        return {**attention_block(job), **mlp_block(job)}
    kept = {"layer input (kept by recompute)": residual_rows(job) * job.config.hidden_size * F32}
    if job.recompute == "full":
        return kept
    return {**kept, **mlp_block(job)}


def recompute_working_set(job: Job) -> int:
    """What backward briefly rebuilds of one layer: the recomputed block's saved tensors."""
    if job.recompute is None:
        return 0
    rebuilt = attention_block(job)
    if job.recompute == "full":
        rebuilt.update(mlp_block(job))
    return sum(rebuilt.values())


def chunk_extras(job: Job, chunk: int) -> dict[str, int]:
    """What one forward of a pipeline chunk saves besides its layers."""
    b, s, h, _, _, _, _, c = _shapes(job)
    cfg, strategy = job.config, job.strategy
    terms: dict[str, int] = {}
    table = s * cfg.head_dim * F32  # the cos or sin rows of the sequence, sliced per forward
    if job.recompute is not None:
        terms["rotary tables (kept by recompute)"] = 2 * table
    elif job.kernels == LLAMA_OPS:
        terms["rotary tables"] = 2 * table
    elif not job.expanded_rope_tables:
        terms["rotary tables"] = table  # cos; sin·sign is per layer
    if chunk == 0:
        terms["token ids"] = b * s * I64
        if _first_norm_copies_alone(job):
            terms["first norm weight copy"] = h * F32
    if chunk == strategy.chunks - 1:
        terms.update(norm(job, "final norm"))
        terms["head input (norm output)"] = b * s * h * c
        # cross_entropy saves its softmax (float32: the logits are cast up for the loss) and the
        # labels; on logits split over the vocabulary (mp) Paddle's rule gathers them first, so
        # every mp rank keeps the whole softmax
        terms["softmax of the logits"] = b * s * cfg.vocab_size * F32
        terms["labels"] = b * s * I64
    if job.compute_bytes != F32:  # autocast's bf16 copies of the weights (Paddle caches none)
        weights = sum(t.elements for t in chunk_tensors(cfg, strategy, chunk) if t.matmul)
        if cfg.tie_word_embeddings and chunk == strategy.chunks - 1:
            weights += cfg.vocab_size * h
        terms["bf16 weight copies"] = weights * c
    return terms


def chunk(job: Job, chunk_index: int) -> dict[str, int]:
    """Every term of one micro-batch's forward through chunk ``chunk_index``, its layers summed."""
    layers = len(job.strategy.chunk_layers(job.config.num_hidden_layers)[chunk_index])
    terms = {f"{name} × {layers} layers": n * layers for name, n in layer(job).items()}
    terms.update(chunk_extras(job, chunk_index))
    return terms


def _round_up(n: int, block: int) -> int:
    return -(-n // block) * block

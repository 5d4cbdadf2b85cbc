"""The model's math, once: attention and the MLP as functions of their weights, a decoder layer
that reads and writes a KV cache, and the whole forward pass over new tokens.

The layers of ``model.py`` hold the parameters (their names, the plan's placements, the hooks of
sequence parallelism) and call :func:`attention` and :func:`mlp` for their math; llama-infer's
dygraph decoding and its static export run :func:`forward`, which composes the same functions over
the new tokens only, with a cache. So training, decoding and the exported programs share one
definition of the model. The functions trace as well as they run: sizes unknown at trace time are
read from the tensors.

Activations in :func:`forward` are ``[tokens, hidden]`` matrices (one GEMM per projection whatever
the batch), and the parameters are used directly rather than through ``Layer.__call__``, whose hook
machinery costs more than the small matmuls of a decode step. Grouped-query attention needs no copy
of the cache: query heads are grouped ``[kv_heads, group]`` so each group multiplies its own
key/value head.
"""

from __future__ import annotations

from dataclasses import dataclass

from llama_model._paddle import paddle
from llama_model.config import LlamaConfig

F = paddle.nn.functional


@dataclass(frozen=True)
class Heads:
    """The attention's head layout."""

    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:  # query heads per key/value head
        return self.num_heads // self.num_kv_heads

    @classmethod
    def of(cls, config: LlamaConfig) -> Heads:
        return cls(config.num_attention_heads, config.num_key_value_heads, config.head_dim)


class LayerWeights:
    """One decoder layer's tensors (Linear weights ``[in, out]``)."""

    __slots__ = ("attn_norm", "down", "gate", "k", "mlp_norm", "o", "q", "up", "v")

    def __init__(self, layer, take):
        attn, mlp_ = layer.self_attn, layer.mlp
        self.attn_norm = take(layer.input_layernorm.weight)
        self.q, self.k = take(attn.q_proj.weight), take(attn.k_proj.weight)
        self.v, self.o = take(attn.v_proj.weight), take(attn.o_proj.weight)
        self.mlp_norm = take(layer.post_attention_layernorm.weight)
        self.gate, self.up, self.down = (
            take(mlp_.gate_proj.weight), take(mlp_.up_proj.weight), take(mlp_.down_proj.weight)
        )  # fmt: skip


class FusedLayerWeights:
    """One decoder layer's tensors for a fused layer kernel: q|k|v and gate|up side by side
    (``[hidden, (heads + 2 kv_heads) head_dim]`` and ``[hidden, 2 intermediate]``), one GEMM each."""

    __slots__ = ("attn_norm", "down", "gate_up", "mlp_norm", "o", "qkv")

    def __init__(self, attn_norm, qkv, o, mlp_norm, gate_up, down):
        self.attn_norm, self.qkv, self.o = attn_norm, qkv, o
        self.mlp_norm, self.gate_up, self.down = mlp_norm, gate_up, down

    @classmethod
    def of(cls, w: LayerWeights) -> FusedLayerWeights:
        """From a layer's separate weights (the joined ones are new tensors: a copy)."""
        qkv = paddle.concat([w.q, w.k, w.v], axis=1)
        gate_up = paddle.concat([w.gate, w.up], axis=1)
        return cls(w.attn_norm, qkv, w.o, w.mlp_norm, gate_up, w.down)


class ModelWeights:
    """The tensors of a whole ``LlamaForCausalLM`` that :func:`forward` reads, looked up once
    (``Layer.__getattr__`` costs microseconds, and a decode step does dozens of lookups).

    ``detach``: eager tensors sharing the parameters' memory but outside autograd (dygraph
    decoding: Paddle's custom-op path costs half as much again per call when an input is a
    parameter, even under no_grad). An export keeps the parameters (detach=False) so its programs
    capture them. A detached view follows in-place updates of the parameters, not replaced ones:
    take new weights after loading others into the model.
    """

    def __init__(self, model, detach: bool):
        if not (model.first and model.last):
            raise ValueError("ModelWeights needs the whole model, not a pipeline stage")
        take = (lambda t: t.detach()) if detach else (lambda t: t)
        config, llama = model.config, model.llama
        self.heads = Heads.of(config)
        self.hidden = config.hidden_size
        self.eps = config.rms_norm_eps
        self.embed = take(llama.embed_tokens.weight)
        self.dtype = self.embed.dtype
        self.layers = [LayerWeights(layer, take) for layer in llama.layers.values()]
        self.norm = take(llama.norm.weight)
        # [hidden, vocab], or None when tied: the head is the embedding, multiplied transposed
        self.head = None if model.lm_head is None else take(model.lm_head.weight)
        self.cos, self.sin = llama.rotary_emb.cos, llama.rotary_emb.sin  # [positions, head_dim]


# ------------------------------------------------------------------------------------ the blocks
def mlp(h, gate, up, down, ops):
    """down(silu(h gate) * (h up))."""
    return paddle.matmul(ops.swiglu(paddle.matmul(h, gate), paddle.matmul(h, up)), down)


def attention(h, q_w, k_w, v_w, o_w, heads: Heads, ops, cos, sin, b, s, cache=None):
    """Causal self-attention of the new tokens ``h``; returns ``(out, keys, values)``, ``out``
    shaped like ``h``.

    Without ``cache`` (training): ``h`` is ``[b, s, hidden]`` (or ``[b*s, hidden]``), ``cos``/
    ``sin`` are ``[s, head_dim]`` (row t: position t, the same for every row of the batch), and
    the new tokens attend over themselves (``ops.causal_attention``); keys and values are None.

    With ``cache = (keys, values, start, mask, fresh)`` (one layer's, see :func:`forward`): ``h`` is
    ``[b*s, hidden]``; the new keys and values are written at slots ``start..start+s`` and the
    caches returned (a prefill and a compiled program make new ones). A prefill without a mask is
    the training case plus the cache write; otherwise ``cos``/``sin`` hold one row per token
    (``[b*s, head_dim]``) and the tokens attend over the cache through the additive ``mask``.
    """
    nq, nk, d = heads.num_heads, heads.num_kv_heads, heads.head_dim
    keys = values = None
    causal = cache is None or (cache[4] and cache[3] is None)
    if causal:
        q = paddle.matmul(h, q_w).reshape([b, s, nq, d])
        k = paddle.matmul(h, k_w).reshape([b, s, nk, d])
        v = paddle.matmul(h, v_w).reshape([b, s, nk, d])
        q, k = ops.apply_rope(q, k, cos, sin)
        if cache is not None:
            keys, values, start = cache[0], cache[1], cache[2]
            keys = _write(keys, _heads_first(k, b, s, nk, d), start, s, True)
            values = _write(values, _heads_first(v, b, s, nk, d), start, s, True)
        out = ops.causal_attention(q, k, v)  # [b, s, nq, d]
        shape = [b, s, nq * d] if len(h.shape) == 3 else [-1, nq * d]
        return paddle.matmul(out.reshape(shape), o_w), keys, values
    out, keys, values = _cached_attention(h, q_w, k_w, v_w, heads, ops, cos, sin, b, s, *cache)
    return paddle.matmul(out, o_w), keys, values


def _cached_attention(
    h, q_w, k_w, v_w, heads, ops, cos, sin, b, s, keys, values, start, mask, fresh
):
    nq, nk, g, d = heads.num_heads, heads.num_kv_heads, heads.group, heads.head_dim
    # With s known, -1 stands for the batch: no shape arithmetic in a program.
    if isinstance(s, int):
        b = -1
    # The kernel's rotary takes one table row per sequence slot; flattening (batch, seq) into the
    # sequence axis gives every token of every row its own position.
    q = paddle.matmul(h, q_w).reshape([1, -1, nq, d])
    k = paddle.matmul(h, k_w).reshape([1, -1, nk, d])
    q, k = ops.apply_rope(q, k, cos, sin)
    v = paddle.matmul(h, v_w)
    k_heads, v_heads = _heads_first(k, b, s, nk, d), _heads_first(v, b, s, nk, d)
    keys, values = _write(keys, k_heads, start, s, fresh), _write(values, v_heads, start, s, fresh)
    # [b, nq, s, d] -> [b, nk, g*s, d]: query head j uses key/value head j // g.
    gs = g * s if isinstance(s, int) else -1
    if _one(s):  # [1, b, nq, d] holds [b, nk, g, d] already
        q = q.reshape([b, nk, g, d])
    else:
        q = _heads_first(q, b, s, nq, d).reshape([b, nk, gs, d])
    if fresh:  # a prefill attends over its own keys: the rest of the cache is empty
        scores = paddle.matmul(q, k_heads, transpose_y=True) * (d**-0.5)  # [b, nk, g*s, s]
        scores = scores.reshape([b, nk, g, s, s]) + mask
        probs = F.softmax(scores, axis=-1).reshape([b, nk, gs, s])
        out = paddle.matmul(probs, v_heads)  # [b, nk, g*s, d]
    else:
        scores = paddle.matmul(q, keys, transpose_y=True)  # [b, nk, g*s, capacity]
        probs = F.softmax(scores * (d**-0.5) + mask, axis=-1)
        out = paddle.matmul(probs, values)
    if _one(s):  # heads and sequence swap for free when there is one position
        out = out.reshape([-1, nq * d])
    else:
        out = out.reshape([b, nq, s, d]).transpose([0, 2, 1, 3]).reshape([-1, nq * d])
    return out, keys, values


def decoder_layer(x, w: LayerWeights, heads: Heads, ops, eps, cos, sin, b, s, cache):
    """x + attention(norm(x)), then + mlp(norm(·)), over the new tokens ``x`` [b*s, hidden], with
    one layer's ``cache`` (see :func:`attention`); returns ``(x, keys, values)``."""
    h = ops.rms_norm(x, w.attn_norm, eps)
    out, keys, values = attention(h, w.q, w.k, w.v, w.o, heads, ops, cos, sin, b, s, cache)
    x = x + out
    h = ops.rms_norm(x, w.mlp_norm, eps)
    return x + mlp(h, w.gate, w.up, w.down, ops), keys, values


# ------------------------------------------------------------------------------- the forward pass
def forward(w: ModelWeights, ops, cos, sin, ids, positions, start, mask, keys, values, fresh=False):
    """Logits [b, vocab] (float32) of the last of the new tokens ``ids`` [b, s], reading and
    writing a KV cache.

    ``positions`` [b*s]: each token's rotary position; ``start``: the cache slot of the first new
    token (an int, or an int64 tensor [1] in a compiled program); ``keys``/``values``: per layer
    [b, kv_heads, capacity, head_dim], written at slots ``start..start+s``: a step writes in place
    in dygraph; a prefill and a compiled program make new caches, which replace the old ones in the
    lists as each layer is done (the lists are returned too). ``cos``/``sin``: the rotary tables.
    ``fresh``: the new tokens are the first in the cache (a prefill, ``start`` 0), so they attend
    over their own keys only and ``mask`` is [b, 1, 1, s, s], or None when no row is padded (then
    the positions are 0..s-1 in every row, and the layers take the training path: causal attention
    through ``ops.causal_attention``, which on CPU is llama-ops' causal softmax and on GPU flash
    attention); otherwise they attend over the whole cache and ``mask`` is [b, kv_heads, group * s,
    capacity], additive, one row per query (the scores' own shape: a broadcasting add costs
    Paddle's CPU kernels 20-40x a plain one at decode sizes). ``ops``: rms_norm / apply_rope /
    swiglu / causal_attention (llama-model's ``kernels``, or ``kernels.plain`` for portable
    programs); with ``decoder_layer`` and ``norm_head`` too (``kernels.fused_layers()``), each
    layer is that one kernel over ``FusedLayerWeights``, the final norm and head another, and a
    prefill needs its ``mask``.
    """
    heads, eps = w.heads, w.eps
    b, s = _size(ids, 0), _size(ids, 1)
    x = F.embedding(ids, w.embed).reshape([-1, w.hidden])
    fused = getattr(ops, "decoder_layer", None)  # a whole layer in one kernel (FusedLayerWeights)
    if fused is None:
        cos, sin, mask = _per_token(cos, sin, positions, mask, heads, s, fresh)
    for i, layer in enumerate(w.layers):
        if fused is not None:  # it reads the rotary tables at the positions itself
            x, keys[i], values[i] = fused(
                x, layer, heads, eps, cos, sin, positions, mask, start, keys[i], values[i]
            )
        else:  # a prefill's new cache replaces the empty one at once: one layer's extra at the peak
            x, keys[i], values[i] = decoder_layer(
                x, layer, heads, ops, eps, cos, sin, b, s, (keys[i], values[i], start, mask, fresh)
            )
    if not _one(s):  # the last token of each row
        x = x.reshape([-1 if isinstance(s, int) else b, s, w.hidden])[:, -1]
    norm_head = getattr(ops, "norm_head", None)  # the final norm and the head in one kernel
    if norm_head is not None:
        tied = w.head is None
        logits = norm_head(x, w.norm, w.embed if tied else w.head, eps, transposed_weight=tied)
    elif w.head is None:
        logits = paddle.matmul(ops.rms_norm(x, w.norm, eps), w.embed, transpose_y=True)
    else:
        logits = paddle.matmul(ops.rms_norm(x, w.norm, eps), w.head)
    if logits.dtype != paddle.float32:
        logits = logits.astype("float32")
    return logits, keys, values


def _per_token(cos, sin, positions, mask, heads: Heads, s, fresh: bool):
    """The rotary rows of the new tokens and the mask as the composed layers take them."""
    if fresh and mask is None:  # positions 0..s-1 in every row: the tables' first rows
        return cos[:s], sin[:s], None
    cos = paddle.gather(cos, positions)  # [b*s, head_dim]: each token's own angle
    sin = paddle.gather(sin, positions)
    if fresh:  # [b, 1, 1, s, s] -> the scores' [b, kv_heads, group, s, s], once for all layers:
        # Paddle's CPU add is far slower when it broadcasts over middle axes
        mask = mask.expand([-1, heads.num_kv_heads, heads.group, -1, -1])
    return cos, sin, mask


def _size(x, axis: int):
    """A dimension as an int, or as a tensor where a compiled program leaves it open (-1)."""
    n = x.shape[axis]
    return n if n >= 0 else paddle.shape(x)[axis]


def _one(s) -> bool:
    return isinstance(s, int) and s == 1


def _write(cache, new, start, s, fresh):
    """``new`` [b, kv_heads, s, d] into cache slots ``start..start+s``: in place in dygraph; in a
    compiled program the assignment yields a new value, hence the return. A prefill (``fresh``,
    start 0) returns a new cache, ``new`` joined to the cache's empty rest: Paddle's CPU slice
    assignment copies element by element, a concat copies whole rows."""
    if fresh:  # start is 0; slicing from start + s keeps it an input of the prefill program
        return paddle.concat([new, cache[:, :, start + s :]], axis=2)
    cache[:, :, start : start + s] = new
    return cache


def _heads_first(x, b, s, heads: int, d: int):
    """[b, s, heads, d] (in any shape holding those elements) -> [b, heads, s, d]; b may be -1."""
    if _one(s):  # a reshape, not a copy: with one position the axes swap for free
        return x.reshape([b, heads, 1, d])
    return x.reshape([b, s, heads, d]).transpose([0, 2, 1, 3])

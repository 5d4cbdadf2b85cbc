"""Incremental decoding in dygraph: the model's forward pass over new tokens only, with a KV cache.

``LlamaForCausalLM.forward`` recomputes every position; generating n tokens that way costs O(n²)
layer passes. ``decode_forward`` runs the *same* sub-layers and parameters of the model (embedding,
norms, q/k/v/o projections, MLP, head, rotary tables, llama-model's kernels) over the new tokens
only, reading and writing the cache that slots.py lays out. It is also the function that export.py
compiles into the prefill and decode programs, so dygraph and static inference share one definition:
it traces as well as it runs (sizes unknown at trace time are read from the tensors).

Grouped-query attention needs no copy of the cache: query heads are grouped ``[kv_heads, group]``
so each group multiplies its own key/value head.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np

from llama_infer._paddle import paddle
from llama_infer.slots import DecodeState, SlotDecoder
from llama_model import LlamaForCausalLM, kernels

F = paddle.nn.functional


class DecodeWeights:
    """The model's tensors that decoding reads, looked up once per decoder instead of per step
    (``Layer.__getattr__`` costs microseconds, and a step does dozens of lookups).

    ``detach``: eager tensors sharing the parameters' memory but outside autograd (dygraph
    decoding: Paddle's custom-op path costs half as much again per call when an input is a
    parameter, even under no_grad). Export keeps the parameters (detach=False) so the programs
    capture them. A detached view follows in-place updates of the parameters, not replaced ones:
    make a new decoder after loading other weights into the model.
    """

    def __init__(self, model: LlamaForCausalLM, detach: bool):
        take = (lambda t: t.detach()) if detach else (lambda t: t)
        config = model.config
        llama = model.llama
        self.hidden = config.hidden_size
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.group = self.num_heads // self.num_kv_heads  # query heads per key/value head
        self.head_dim = config.head_dim
        self.eps = config.rms_norm_eps
        self.embed = take(llama.embed_tokens.weight)
        self.layers = [
            SimpleNamespace(
                attn_norm=take(layer.input_layernorm.weight),
                q=take(layer.self_attn.q_proj.weight),
                k=take(layer.self_attn.k_proj.weight),
                v=take(layer.self_attn.v_proj.weight),
                o=take(layer.self_attn.o_proj.weight),
                mlp_norm=take(layer.post_attention_layernorm.weight),
                gate=take(layer.mlp.gate_proj.weight),
                up=take(layer.mlp.up_proj.weight),
                down=take(layer.mlp.down_proj.weight),
            )
            for layer in llama.layers.values()
        ]
        self.norm = take(llama.norm.weight)
        # [hidden, vocab], or None when tied: the head is the embedding, multiplied transposed
        self.head = None if model.lm_head is None else take(model.lm_head.weight)


def decode_forward(
    weights: DecodeWeights, ops, cos, sin, ids, positions, start, mask, keys, values, fresh=False
):
    """Logits [b, vocab] (float32) of the last of the new tokens ``ids`` [b, s].

    ``positions`` [b*s]: each token's rotary position; ``start``: the cache slot of the first new
    token (an int, or an int64 tensor [1] in a compiled program); ``keys``/``values``: per layer
    [b, kv_heads, capacity, head_dim], written at slots ``start..start+s``: a step writes in place
    in dygraph; a prefill and a compiled program make new caches, which replace the old ones in the
    lists as each layer is done (the lists are returned too).
    ``fresh``: the new tokens are the first in the cache (a prefill, ``start`` 0), so they attend
    over their own keys only and ``mask`` is [b, 1, 1, s, s], or None when no row is padded (plain
    causal attention through ``ops.causal_attention``: llama-model's kernel, which on CPU takes
    llama-ops' causal softmax and on GPU flash attention); otherwise they attend over the whole
    cache and ``mask`` is [b, kv_heads, group * s, capacity], additive, one row per query (the
    scores' own shape: a broadcasting add costs Paddle's CPU kernels 20-40x a plain one at decode
    sizes). ``ops``: rms_norm / apply_rope / swiglu.
    """
    # The model's parameters are used directly rather than through Layer.__call__, whose hook
    # machinery costs more than the small matmuls of a decode step. Activations are [tokens, hidden]
    # matrices: one GEMM per projection whatever the batch.
    w, eps = weights, weights.eps
    b, s = _size(ids, 0), _size(ids, 1)
    x = F.embedding(ids, w.embed).reshape([-1, w.hidden])
    cos = paddle.gather(cos, positions)  # [b*s, head_dim]: each token's own angle
    sin = paddle.gather(sin, positions)
    if fresh and mask is not None:  # [b, 1, 1, s, s] -> the scores' [b, kv_heads, group, s, s]
        # once for all layers: Paddle's CPU add broadcasting middle axes is 20-40x slower
        mask = mask.expand([-1, w.num_kv_heads, w.group, -1, -1])
    for i, layer in enumerate(w.layers):
        h = ops.rms_norm(x, layer.attn_norm, eps)
        out, keys[i], values[i] = _attention(
            w, layer, ops, h, cos, sin, start, mask, keys[i], values[i], b, s, fresh
        )  # a prefill's new cache replaces the empty one at once: one layer's extra at the peak
        x = x + out
        h = ops.rms_norm(x, layer.mlp_norm, eps)
        gate, up = paddle.matmul(h, layer.gate), paddle.matmul(h, layer.up)
        x = x + paddle.matmul(ops.swiglu(gate, up), layer.down)
    if not _one(s):  # the last token of each row
        x = x.reshape([-1 if isinstance(s, int) else b, s, w.hidden])[:, -1]
    x = ops.rms_norm(x, w.norm, eps)
    if w.head is None:
        logits = paddle.matmul(x, w.embed, transpose_y=True)
    else:
        logits = paddle.matmul(x, w.head)
    if logits.dtype != paddle.float32:
        logits = logits.astype("float32")
    return logits, keys, values


def _size(x, axis: int):
    """A dimension as an int, or as a tensor where a compiled program leaves it open (-1)."""
    n = x.shape[axis]
    return n if n >= 0 else paddle.shape(x)[axis]


def _attention(w, layer, ops, h, cos, sin, start, mask, keys, values, b, s, fresh):
    """Self-attention of the new tokens ``h`` [b*s, hidden]; returns ([b*s, hidden], keys, values)."""
    nq, nk, g, d = w.num_heads, w.num_kv_heads, w.group, w.head_dim
    # With s known, -1 stands for the batch: no shape arithmetic in a program.
    if isinstance(s, int):
        b = -1
    # The kernel's rotary takes one table row per sequence slot; flattening (batch, seq) into the
    # sequence axis gives every token of every row its own position.
    q = paddle.matmul(h, layer.q).reshape([1, -1, nq, d])
    k = paddle.matmul(h, layer.k).reshape([1, -1, nk, d])
    q, k = ops.apply_rope(q, k, cos, sin)
    v = paddle.matmul(h, layer.v)
    k_heads, v_heads = _heads_first(k, b, s, nk, d), _heads_first(v, b, s, nk, d)
    keys, values = _write(keys, k_heads, start, s, fresh), _write(values, v_heads, start, s, fresh)
    if fresh and mask is None:  # a prefill without padding: the model's own causal attention
        out = ops.causal_attention(
            q.reshape([b, s, nq, d]), k.reshape([b, s, nk, d]), v.reshape([b, s, nk, d])
        ).reshape([-1, nq * d])
        return paddle.matmul(out, layer.o), keys, values
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
    return paddle.matmul(out, layer.o), keys, values


def _one(s) -> bool:
    return isinstance(s, int) and s == 1


def _write(cache, new, start, s, fresh):
    """``new`` [b, kv_heads, s, d] into cache slots ``start..start+s``: in place in dygraph; in a
    compiled program the assignment yields a new value, hence the return. A prefill (``fresh``,
    start 0) returns a new cache, ``new`` joined to the cache's empty rest: Paddle's CPU slice
    assignment copies element by element (0.8 ms for config T's 256 KB at batch 8), a concat by rows."""
    if fresh:  # start is 0; slicing from start + s keeps it an input of the prefill program
        return paddle.concat([new, cache[:, :, start + s :]], axis=2)
    cache[:, :, start : start + s] = new
    return cache


def _heads_first(x, b, s, heads: int, d: int):
    """[b, s, heads, d] (in any shape holding those elements) -> [b, heads, s, d]; b may be -1."""
    if _one(s):  # a reshape, not a copy: with one position the axes swap for free
        return x.reshape([b, heads, 1, d])
    return x.reshape([b, s, heads, d]).transpose([0, 2, 1, 3])


class CachedDecoder(SlotDecoder):
    """KV-cache decoding of a ``LlamaForCausalLM`` in dygraph (see slots.py for the cache layout)."""

    def __init__(self, model: LlamaForCausalLM):
        if not (model.first and model.last):
            raise ValueError("CachedDecoder needs the whole model, not a pipeline stage")
        self.model = model
        self.weights = w = DecodeWeights(model, detach=True)
        self.num_layers = len(w.layers)
        self.num_kv_heads, self.group, self.head_dim = w.num_kv_heads, w.group, w.head_dim
        self.dtype = model.llama.embed_tokens.weight.dtype
        self.on_cpu = model.llama.embed_tokens.weight.place.is_cpu_place()
        rotary = model.llama.rotary_emb
        self.cos = rotary.cos.astype(self.dtype)
        self.sin = rotary.sin.astype(self.dtype)

    @paddle.no_grad()
    def prefill(self, input_ids: np.ndarray, pads: np.ndarray, max_len: int):
        return super().prefill(input_ids, pads, max_len)

    @paddle.no_grad()
    def step(self, state: DecodeState, tokens: np.ndarray):
        return super().step(state, tokens)

    def _forward(
        self, ids, positions, start: int, mask, state: DecodeState, fresh: bool
    ) -> np.ndarray:
        # The prefill's transposes write contiguous copies (see llama-model's no_strided_views:
        # Paddle's CPU views cost an element-wise copy at the next reshape); a step has none. On CPU
        # a prefill without padding needs no mask: llama-model's causal attention, with llama-ops'
        # causal softmax. (On GPU that would be Paddle's flash attention, untried here with
        # float32: the masked path stays.)
        if fresh and self.on_cpu and not state.pads.any():
            mask = None
        with kernels.no_strided_views() if fresh else contextlib.nullcontext():
            logits, _, _ = decode_forward(
                self.weights, kernels, self.cos, self.sin, ids, positions, start, mask,
                state.keys, state.values, fresh=fresh,
            )  # fmt: skip
        return logits.numpy()

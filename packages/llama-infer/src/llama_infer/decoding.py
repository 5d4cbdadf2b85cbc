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

import numpy as np

from llama_infer._paddle import paddle
from llama_infer.slots import DecodeState, SlotDecoder
from llama_model import LlamaForCausalLM, kernels

F = paddle.nn.functional


def decode_forward(
    model: LlamaForCausalLM, ops, cos, sin, ids, positions, start, mask, keys, values, fresh=False
):
    """Logits [b, vocab] (float32) of the last of the new tokens ``ids`` [b, s].

    ``positions`` [b*s]: each token's rotary position; ``start``: the cache slot of the first new
    token (an int, or an int64 tensor [1] in a compiled program); ``keys``/``values``: per layer
    [b, kv_heads, capacity, head_dim], written at slots ``start..start+s`` (in place in dygraph; a
    compiled program returns the new caches, which is why the updated lists are returned too).
    ``fresh``: the new tokens are the first in the cache (a prefill, ``start`` 0), so they attend
    over their own keys only and ``mask`` is [b, 1, 1, s, s]; otherwise they attend over the whole
    cache and ``mask`` is [b, 1, 1, s, capacity] (additive). ``ops``: rms_norm / apply_rope / swiglu.
    """
    # Sub-layers are used through their parameters rather than Layer.__call__, whose hook
    # machinery costs more than the small matmuls of a decode step.
    llama, config = model.llama, model.config
    dims = (_size(ids, 0), _size(ids, 1), config.num_attention_heads, config.num_key_value_heads)
    x = F.embedding(ids, llama.embed_tokens.weight)
    cos = paddle.gather(cos, positions)  # [b*s, head_dim]: each token's own angle
    sin = paddle.gather(sin, positions)
    new_keys, new_values = [], []
    for i, layer in enumerate(llama.layers.values()):
        h = ops.rms_norm(x, layer.input_layernorm.weight, layer.input_layernorm.eps)
        out, k, v = _attention(
            layer.self_attn, ops, h, cos, sin, start, mask, keys[i], values[i], dims, fresh
        )
        new_keys.append(k)
        new_values.append(v)
        x = x + out
        norm, mlp = layer.post_attention_layernorm, layer.mlp
        h = ops.rms_norm(x, norm.weight, norm.eps)
        gate, up = paddle.matmul(h, mlp.gate_proj.weight), paddle.matmul(h, mlp.up_proj.weight)
        x = x + paddle.matmul(ops.swiglu(gate, up), mlp.down_proj.weight)
    x = ops.rms_norm(x[:, -1], llama.norm.weight, llama.norm.eps)
    if model.lm_head is None:  # tied: the head is the embedding
        logits = paddle.matmul(x, llama.embed_tokens.weight, transpose_y=True)
    else:
        logits = paddle.matmul(x, model.lm_head.weight)
    return logits.astype("float32"), new_keys, new_values


def _size(x, axis: int):
    """A dimension as an int, or as a tensor where a compiled program leaves it open (-1)."""
    n = x.shape[axis]
    return n if n >= 0 else paddle.shape(x)[axis]


def _attention(attn, ops, h, cos, sin, start, mask, keys, values, dims, fresh):
    b, s, nq, nk = dims
    d = attn.q_proj.weight.shape[1] // nq
    g = nq // nk
    if isinstance(
        s, int
    ):  # with s known, -1 stands for the batch: no shape arithmetic in a program
        b = -1
    # The kernel's rotary takes one table row per sequence slot; flattening (batch, seq) into the
    # sequence axis gives every token of every row its own position.
    q = paddle.matmul(h, attn.q_proj.weight).reshape([1, -1, nq, d])
    k = paddle.matmul(h, attn.k_proj.weight).reshape([1, -1, nk, d])
    q, k = ops.apply_rope(q, k, cos, sin)
    v = paddle.matmul(h, attn.v_proj.weight)
    k, v = _heads_first(k, b, s, nk, d), _heads_first(v, b, s, nk, d)
    keys, values = _write(keys, k, start, s), _write(values, v, start, s)
    # A prefill attends over its own keys: the rest of the cache is empty.
    attended_k, attended_v = (k, v) if fresh else (keys, values)
    width = s if fresh else keys.shape[2]  # the keys attended: the prompt, or the whole cache
    # [b, nq, s, d] -> [b, nk, g*s, d]: query head j uses key/value head j // g.
    gs = g * s if isinstance(s, int) else -1
    q = _heads_first(q, b, s, nq, d).reshape([b, nk, gs, d])
    scores = paddle.matmul(q, attended_k, transpose_y=True) * (d**-0.5)  # [b, nk, g*s, width]
    scores = scores.reshape([b, nk, g, s, width]) + mask
    probs = F.softmax(scores, axis=-1).reshape([b, nk, gs, width])
    out = paddle.matmul(probs, attended_v)  # [b, nk, g*s, d]
    if _one(s):  # heads and sequence swap for free when there is one position
        out = out.reshape([b, 1, nq * d])
    else:
        out = out.reshape([b, nq, s, d]).transpose([0, 2, 1, 3]).reshape([b, s, nq * d])
    return paddle.matmul(out, attn.o_proj.weight), keys, values


def _one(s) -> bool:
    return isinstance(s, int) and s == 1


def _write(cache, new, start, s):
    """``new`` [b, kv_heads, s, d] into cache slots ``start..start+s``: in place in dygraph; in a
    compiled program the assignment yields a new value, hence the return."""
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
        config = model.config
        self.num_layers = config.num_hidden_layers
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.dtype = model.llama.embed_tokens.weight.dtype
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
        logits, _, _ = decode_forward(
            self.model, kernels, self.cos, self.sin, ids, positions, start, mask,
            state.keys, state.values, fresh=fresh,
        )  # fmt: skip
        return logits.numpy()

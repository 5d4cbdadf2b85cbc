"""Incremental decoding: the model's forward pass over new tokens only, with a key/value cache.

``LlamaForCausalLM.forward`` recomputes every position; generating n tokens that way costs O(n²)
layer passes. ``CachedDecoder`` runs the *same* sub-layers and parameters of the model (embedding,
norms, q/k/v/o projections, MLP, head, rotary tables, llama-model's kernels) and adds only what
decoding needs:

- a cache per layer, ``[batch, kv_heads, max_len, head_dim]`` for keys and for values, allocated once
  for the whole generation and written in place at each step's slot (no concatenation per step);
- attention of the new queries over the whole cache with an additive mask that hides left padding
  and slots not yet written, so a batch of prompts of different lengths decodes together;
- a position per row: row i, left-padded by ``pad[i]``, gives its token in slot t the position
  ``t - pad[i]``, as Hugging Face derives ``position_ids`` from the attention mask.

Slots are the columns of the padded batch: slot t of every row is written at the same step. Grouped-
query attention needs no copy of the cache: query heads are grouped ``[kv_heads, group]`` so each
group multiplies its own key/value head.
"""

from __future__ import annotations

import numpy as np

from llama_infer._paddle import paddle

# llama-model's kernels module holds the model's rotary and norm primitives (and picks llama-ops'
# fused kernels when installed); calling it keeps rotary math in one place.
from llama_model import LlamaForCausalLM, kernels

F = paddle.nn.functional


class DecodeState:
    """The per-generation state: key/value caches, the attention mask and where the next slot is."""

    def __init__(self, keys, values, mask, pads: np.ndarray, next_slot: int):
        self.keys = keys  # per layer [b, kv_heads, max_len, head_dim]
        self.values = values
        self.mask = mask  # [b, 1, 1, 1, max_len] additive: 0 where a key may be attended
        self.pads = pads  # [b] left padding of each row
        self.next_slot = next_slot
        self.ids = None  # [b, 1] and [b] int64 tensors refilled at each step
        self.positions = None

    @property
    def max_len(self) -> int:
        return int(self.mask.shape[-1])


class CachedDecoder:
    """Prefill a left-padded batch, then decode one token per row per step, reusing the cache."""

    def __init__(self, model: LlamaForCausalLM):
        if not (model.first and model.last):
            raise ValueError("CachedDecoder needs the whole model, not a pipeline stage")
        self.model = model
        config = model.config
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.group = config.num_key_value_groups
        self.max_positions = config.max_position_embeddings
        self.layers = list(model.llama.layers.values())
        self.dtype = model.llama.embed_tokens.weight.dtype
        rotary = model.llama.rotary_emb
        self.cos = rotary.cos.astype(self.dtype)
        self.sin = rotary.sin.astype(self.dtype)
        self.min_value = float(np.finfo(np.float32).min) if self.dtype == paddle.float32 else -1e4

    # ------------------------------------------------------------------------------------ public
    @paddle.no_grad()
    def prefill(self, input_ids: np.ndarray, pads: np.ndarray, max_len: int):
        """Run the prompt batch ``input_ids`` [b, p] (row i left-padded by ``pads[i]``) into a fresh
        cache of ``max_len`` slots; returns (state, logits of the last slot [b, vocab] float32)."""
        b, p = input_ids.shape
        if p > max_len:
            raise ValueError(f"prompt of {p} slots does not fit a cache of {max_len}")
        shape = [b, self.num_kv_heads, max_len, self.head_dim]
        keys = [paddle.zeros(shape, dtype=self.dtype) for _ in self.layers]
        values = [paddle.zeros(shape, dtype=self.dtype) for _ in self.layers]
        slots = np.arange(max_len)
        real = slots[None, :] >= pads[:, None]  # [b, max_len]: not padding
        causal = (
            slots[None, :p, None] >= slots[None, None, :]
        )  # [1, p, max_len]: key slot <= query slot
        allowed = real[:, None, :] & causal  # [b, p, max_len]
        prefill_mask = self._additive(allowed[:, None, None])  # [b, 1, 1, p, max_len]
        # Later steps: every real slot written so far; the step's own slot is opened as it is written.
        step_mask = self._additive((real & (slots < p)[None, :])[:, None, None, None])
        positions = np.maximum(slots[None, :p] - pads[:, None], 0)
        state = DecodeState(keys, values, step_mask, pads.astype(np.int64), p)
        logits = self._forward(input_ids, positions, 0, prefill_mask, state)
        return state, logits

    @paddle.no_grad()
    def step(self, state: DecodeState, tokens: np.ndarray):
        """Append one token per row (``tokens`` [b]); returns the logits that follow it [b, vocab]."""
        slot = state.next_slot
        if slot >= state.max_len:
            raise ValueError(f"the cache of {state.max_len} slots is full")
        state.mask[:, :, :, :, slot] = 0.0
        positions = (slot - state.pads)[:, None]
        logits = self._forward(tokens[:, None], positions, slot, state.mask, state)
        state.next_slot = slot + 1
        return logits

    # ---------------------------------------------------------------------------------- internals
    def _additive(self, allowed: np.ndarray):
        mask = np.where(allowed, 0.0, self.min_value).astype(np.float32)
        return paddle.to_tensor(mask).astype(self.dtype)

    def _forward(
        self, ids: np.ndarray, positions: np.ndarray, start: int, mask, state: DecodeState
    ):
        # Sub-layers are used through their parameters and llama-model's kernels rather than
        # Layer.__call__, whose hook machinery costs more than the small matmuls of a decode step.
        llama = self.model.llama
        x = F.embedding(self._ids(state, ids), llama.embed_tokens.weight)
        flat_positions = self._positions(state, positions)
        cos = paddle.gather(self.cos, flat_positions)  # [b*s, head_dim]: each token's own angle
        sin = paddle.gather(self.sin, flat_positions)
        for i, layer in enumerate(self.layers):
            h = _norm(layer.input_layernorm, x)
            x = x + self._attention(layer.self_attn, h, cos, sin, start, mask, state, i)
            mlp = layer.mlp
            h = _norm(layer.post_attention_layernorm, x)
            gate, up = paddle.matmul(h, mlp.gate_proj.weight), paddle.matmul(h, mlp.up_proj.weight)
            x = x + paddle.matmul(kernels.swiglu(gate, up), mlp.down_proj.weight)
        x = _norm(llama.norm, x[:, -1])
        head = self.model.lm_head
        if head is None:  # tied: the head is the embedding
            logits = paddle.matmul(x, llama.embed_tokens.weight, transpose_y=True)
        else:
            logits = paddle.matmul(x, head.weight)
        return logits.astype("float32").numpy()

    @staticmethod
    def _ids(state: DecodeState, ids: np.ndarray):
        if ids.shape[1] > 1:
            return paddle.to_tensor(ids, dtype="int64")
        # One token per row: refill a tensor kept for that, cheaper than a new tensor per step.
        if state.ids is None:
            state.ids = paddle.to_tensor(ids, dtype="int64")
        else:
            state.ids.set_value(ids.astype(np.int64, copy=False))
        return state.ids

    @staticmethod
    def _positions(state: DecodeState, positions: np.ndarray):
        flat = positions.reshape(-1).astype(np.int64)
        if positions.shape[1] > 1:
            return paddle.to_tensor(flat)
        if state.positions is None:
            state.positions = paddle.to_tensor(flat)
        else:
            state.positions.set_value(flat)
        return state.positions

    def _attention(self, attn, h, cos, sin, start: int, mask, state: DecodeState, i: int):
        b, s = h.shape[0], h.shape[1]
        nq, nk, d, g = self.num_heads, self.num_kv_heads, self.head_dim, self.group
        # The kernel's rotary takes one table row per sequence slot; flattening (batch, seq) into the
        # sequence axis gives every token of every row its own position.
        q = paddle.matmul(h, attn.q_proj.weight).reshape([1, b * s, nq, d])
        k = paddle.matmul(h, attn.k_proj.weight).reshape([1, b * s, nk, d])
        q, k = kernels.apply_rope(q, k, cos, sin)
        v = paddle.matmul(h, attn.v_proj.weight)
        keys, values = state.keys[i], state.values[i]
        keys[:, :, start : start + s] = _heads_first(k, b, s, nk, d)
        values[:, :, start : start + s] = _heads_first(v, b, s, nk, d)
        # [b, nq, s, d] -> [b, nk, g*s, d]: query head j uses key/value head j // g.
        q = _heads_first(q, b, s, nq, d).reshape([b, nk, g * s, d])
        scores = paddle.matmul(q, keys, transpose_y=True) * (d**-0.5)  # [b, nk, g*s, max_len]
        scores = scores.reshape([b, nk, g, s, -1]) + mask
        probs = F.softmax(scores, axis=-1).reshape([b, nk, g * s, -1])
        out = paddle.matmul(probs, values)  # [b, nk, g*s, d]
        if s == 1:  # heads and sequence swap for free when there is one position
            out = out.reshape([b, 1, nq * d])
        else:
            out = out.reshape([b, nq, s, d]).transpose([0, 2, 1, 3]).reshape([b, s, nq * d])
        return paddle.matmul(out, attn.o_proj.weight)


def _norm(layer, x):
    return kernels.rms_norm(x, layer.weight, layer.eps)


def _heads_first(x, b: int, s: int, heads: int, d: int):
    """[b, s, heads, d] (in any shape holding those elements) -> [b, heads, s, d]."""
    if s == 1:  # a reshape, not a copy: with one position the axes swap for free
        return x.reshape([b, heads, 1, d])
    return x.reshape([b, s, heads, d]).transpose([0, 2, 1, 3])

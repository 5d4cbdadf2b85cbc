"""The host side of KV-cache decoding, shared by the dygraph decoder and the exported programs.

A cache per layer, ``[batch, kv_heads, capacity, head_dim]`` for keys and for values, is allocated
once per generation (the prefill may hand back a filled copy in its place) and written at each
step's slot (no concatenation per step). Slots are the columns of the left-padded batch: slot t of
every row is written at the same step. A step's query attends over the whole cache with an additive
mask that hides left padding and slots not yet written, so a batch of prompts of different lengths
decodes together; the prefill attends over the prompt's own keys only (the rest of the cache is
still empty). The step's mask has the attention scores' own shape, ``[b, kv_heads, group,
capacity]`` (the same row for every head), because Paddle's CPU add is 20-40x slower when it
broadcasts; it is updated in place, one slot per step (a fused export's decoder keeps a host copy
on the state, ``host_mask``, and updates that). Row i, left-padded by ``pad[i]``, gives its
token in slot t the position ``t - pad[i]``, as Hugging Face derives ``position_ids`` from the
attention mask.

``SlotDecoder`` keeps this bookkeeping; a subclass supplies ``_forward`` (the model over the new
tokens, writing their keys and values into the cache). This module never imports llama-model: the
static predictor, which runs without it, shares it.
"""

from __future__ import annotations

import numpy as np

from llama_infer._paddle import paddle


class DecodeState:
    """The per-generation state: key/value caches, the attention mask and where the next slot is."""

    def __init__(self, keys, values, mask, pads: np.ndarray, next_slot: int):
        self.keys = keys  # per layer [b, kv_heads, capacity, head_dim]
        self.values = values
        self.mask = mask  # [b, kv_heads, group, capacity] additive: 0 where a key may be attended
        self.pads = pads  # [b] left padding of each row
        self.next_slot = next_slot
        self.ids = None  # [b, 1] and [b] int64 tensors refilled at each step
        self.positions = None
        self.host_mask = None  # numpy copy of mask, for decoders that feed it from the host

    @property
    def max_len(self) -> int:
        return int(self.mask.shape[-1])


class SlotDecoder:
    """Prefill a left-padded batch, then decode one token per row per step, reusing the cache."""

    num_layers: int
    num_kv_heads: int
    group: int  # query heads per key/value head
    head_dim: int
    dtype: object  # the paddle dtype of activations and caches

    @property
    def min_value(self) -> float:
        return float(np.finfo(np.float32).min) if self.dtype == paddle.float32 else -1e4

    def cache_len(self, needed: int) -> int:
        """Slots to allocate for ``needed`` (prompt + new tokens); a fixed-capacity cache says more."""
        return needed

    def prefill(self, input_ids: np.ndarray, pads: np.ndarray, max_len: int):
        """Run the prompt batch ``input_ids`` [b, p] (row i left-padded by ``pads[i]``) into a fresh
        cache of at least ``max_len`` slots; returns (state, logits of the last slot [b, vocab] float32)."""
        b, p = input_ids.shape
        if p > max_len:
            raise ValueError(f"prompt of {p} slots does not fit a cache of {max_len}")
        slots_total = self.cache_len(max_len)
        shape = [b, self.num_kv_heads, slots_total, self.head_dim]
        keys = [paddle.zeros(shape, dtype=self.dtype) for _ in range(self.num_layers)]
        values = [paddle.zeros(shape, dtype=self.dtype) for _ in range(self.num_layers)]
        slots = np.arange(slots_total)
        real = slots[None, :] >= pads[:, None]  # [b, capacity]: not padding
        causal = slots[None, :p, None] >= slots[None, None, :]  # [1, p, capacity]: key <= query
        allowed = real[:, None, :p] & causal[:, :, :p]  # [b, p, p]
        prefill_mask = self._additive(allowed[:, None, None])  # [b, 1, 1, p, p]
        # Later steps: every real slot written so far; the step's own slot is opened as it is written.
        written = (real & (slots < p)[None, :])[:, None, None, :]
        step_mask = self._additive(
            np.broadcast_to(written, (b, self.num_kv_heads, self.group, slots_total))
        )
        positions = np.maximum(slots[None, :p] - pads[:, None], 0)
        state = DecodeState(keys, values, step_mask, pads.astype(np.int64), p)
        ids = paddle.to_tensor(input_ids, dtype="int64")
        flat = paddle.to_tensor(positions.reshape(-1).astype(np.int64))
        logits = self._forward(ids, flat, 0, prefill_mask, state, fresh=True)
        return state, logits

    def step(self, state: DecodeState, tokens: np.ndarray):
        """Append one token per row (``tokens`` [b]); returns the logits that follow it [b, vocab]."""
        slot = state.next_slot
        if slot >= state.max_len:
            raise ValueError(f"the cache of {state.max_len} slots is full")
        ids = tokens.reshape(-1, 1).astype(np.int64, copy=False)
        logits = self._decode(state, ids, (slot - state.pads).astype(np.int64), slot)
        state.next_slot = slot + 1
        return logits

    def _decode(self, state: DecodeState, ids: np.ndarray, positions: np.ndarray, slot: int):
        """One step's model call: ``ids`` [b, 1] written at ``slot``, ``positions`` [b]; opens the
        slot in the mask and returns the logits [b, vocab] float32."""
        state.mask[:, :, :, slot] = 0.0
        # One token per row: refill tensors kept for that, cheaper than new tensors per step.
        if state.ids is None:
            state.ids, state.positions = paddle.to_tensor(ids), paddle.to_tensor(positions)
        else:
            state.ids.set_value(ids)
            state.positions.set_value(positions)
        return self._forward(state.ids, state.positions, slot, state.mask, state, fresh=False)

    def _forward(
        self, ids, positions, start: int, mask, state: DecodeState, fresh: bool
    ) -> np.ndarray:
        """The model over ``ids`` [b, s] at flat ``positions`` [b*s], written to cache slots
        ``start..start+s`` of ``state``; returns the last slot's logits [b, vocab] float32.
        ``fresh``: the prefill (``start`` 0, ``mask`` [b, 1, 1, s, s]); else one step (s = 1,
        ``mask`` [b, kv_heads, group, capacity])."""
        raise NotImplementedError

    def _additive(self, allowed: np.ndarray):
        mask = np.where(allowed, 0.0, self.min_value).astype(np.float32)
        return paddle.to_tensor(mask).astype(self.dtype)

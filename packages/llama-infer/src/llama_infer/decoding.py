"""Incremental decoding in dygraph: the model's forward pass over new tokens only, with a KV cache.

``LlamaForCausalLM.forward`` recomputes every position; generating n tokens that way costs O(n²)
layer passes. ``CachedDecoder`` runs llama-model's ``functional.forward`` (the same functions the
model's layers train with, over the model's own parameters) on the new tokens only, reading and
writing the cache that slots.py lays out. export.py compiles the same function into the prefill
and decode programs, so dygraph and static inference share one definition.
"""

from __future__ import annotations

import contextlib

import numpy as np

from llama_infer._paddle import paddle
from llama_infer.slots import DecodeState, SlotDecoder
from llama_model import LlamaForCausalLM, functional, kernels


class CachedDecoder(SlotDecoder):
    """KV-cache decoding of a ``LlamaForCausalLM`` in dygraph (see slots.py for the cache layout)."""

    def __init__(self, model: LlamaForCausalLM):
        self.model = model
        self.weights = w = functional.ModelWeights(model, detach=True)
        self.num_layers = len(w.layers)
        heads = w.heads
        self.num_kv_heads, self.group, self.head_dim = (
            heads.num_kv_heads,
            heads.group,
            heads.head_dim,
        )
        self.dtype = w.dtype
        self.on_cpu = w.embed.place.is_cpu_place()
        self.cos = w.cos.astype(self.dtype)
        self.sin = w.sin.astype(self.dtype)
        self.ops = kernels.for_inference(self.dtype, self.on_cpu)  # straight calls, chosen once

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
            logits, _, _ = functional.forward(
                self.weights, self.ops, self.cos, self.sin, ids, positions, start, mask,
                state.keys, state.values, fresh=fresh,
            )  # fmt: skip
        return logits.numpy()

"""The LLaMA decoder: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU MLP, pre-norm layers.

The layers hold the parameters; the math of attention and the MLP is ``functional``'s, which
decoding and the static export share. Nothing here knows about devices, meshes, placements or
recomputation (see plan.py and pipeline.py). A model can be
built whole or as one pipeline stage (a contiguous range of layers, with or without the embedding and
the head); either way every parameter carries its full-model PaddleNLP name, e.g.
``llama.layers.5.self_attn.q_proj.weight``, so checkpoints move between layouts unchanged.
Linear weights are stored ``[in, out]`` as Paddle does.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable

import numpy as np

from llama_model import functional, kernels
from llama_model._paddle import paddle
from llama_model.config import LlamaConfig
from llama_model.errors import LlamaModelError

nn = paddle.nn


def _linear(fan_in: int, fan_out: int) -> nn.Linear:
    return nn.Linear(fan_in, fan_out, bias_attr=False)


class LlamaRMSNorm(nn.Layer):
    """y = x / sqrt(mean(x²) + eps) * weight."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = self.create_parameter(
            [hidden_size], default_initializer=nn.initializer.Constant(1.0)
        )
        self.eps = eps

    def forward(self, x):
        return kernels.rms_norm(x, self.weight, self.eps)


def rope_inverse_frequencies(config: LlamaConfig) -> np.ndarray:
    """θ_i = rope_theta^(-2i/d), adjusted by ``rope_scaling`` ("linear" or "llama3") as Hugging Face does."""
    d = config.head_dim
    inv = 1.0 / (config.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        inv = inv / scaling["factor"]
    elif kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        old_len = scaling.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / inv
        low_wavelen, high_wavelen = old_len / low, old_len / high
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv / factor + smooth * inv
        inv = np.where(wavelen > low_wavelen, inv / factor, inv)
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(medium, smoothed, inv)
    return inv.astype(np.float32)


class LlamaRotaryEmbedding(nn.Layer):
    """cos/sin tables [max_positions, head_dim] in the rotate-half layout, computed once."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        # float32 as Hugging Face computes them: the product position·θ loses precision in float32 only
        # beyond ~2^24, far past any context length used here.
        inv = rope_inverse_frequencies(config)
        t = np.arange(config.max_position_embeddings, dtype=np.float32)
        freqs = np.outer(t, inv).astype(np.float32)
        emb = np.concatenate([freqs, freqs], axis=-1)
        self.register_buffer("cos", paddle.to_tensor(np.cos(emb)), persistable=False)
        self.register_buffer("sin", paddle.to_tensor(np.sin(emb)), persistable=False)

    def forward(self, seq_len: int):
        return self.cos[:seq_len], self.sin[:seq_len]


class LlamaAttention(nn.Layer):
    """Causal self-attention with grouped-query heads: num_key_value_heads ≤ num_attention_heads."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.heads = functional.Heads.of(config)
        self.q_proj = _linear(h, self.heads.num_heads * d)
        self.k_proj = _linear(h, self.heads.num_kv_heads * d)
        self.v_proj = _linear(h, self.heads.num_kv_heads * d)
        self.o_proj = _linear(self.heads.num_heads * d, h)

    def forward(self, x, cos, sin):
        out, _, _ = functional.attention(
            x, self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, self.o_proj.weight,
            self.heads, kernels, cos, sin, x.shape[0], x.shape[1],
        )  # fmt: skip
        return out


class LlamaMLP(nn.Layer):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = _linear(config.hidden_size, config.intermediate_size)
        self.up_proj = _linear(config.hidden_size, config.intermediate_size)
        self.down_proj = _linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return functional.mlp(
            x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight, kernels
        )


class LlamaDecoderLayer(nn.Layer):
    """x + attn(norm(x)), then + mlp(norm(·)) (``functional.decoder_layer`` with a cache).

    The sub-layers are called as layers, so hooks on them run (sequence parallelism's); the plan
    may wrap ``attention_block`` or ``forward`` for recomputation (``plan.apply_recompute``)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def attention_block(self, x, cos, sin):
        return self.self_attn(self.input_layernorm(x), cos, sin)

    def forward(self, x, cos, sin):
        x = x + self.attention_block(x, cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Layer):
    """The decoder stack. Holds ``embed_tokens`` and ``norm`` only when this stage owns them."""

    def __init__(self, config: LlamaConfig, layer_ids: Iterable[int], embed: bool, norm: bool):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size) if embed else None
        # A LayerDict keyed by the global layer index gives stage parameters their full-model names.
        self.layers = nn.LayerDict({str(i): LlamaDecoderLayer(config) for i in layer_ids})
        self.norm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps) if norm else None
        self.rotary_emb = LlamaRotaryEmbedding(config)

    def forward(self, x):
        if self.embed_tokens is not None:
            x = self.embed_tokens(x)
        cos, sin = self.rotary_emb(x.shape[1])
        for layer in self.layers.values():
            x = layer(x, cos, sin)
        if self.norm is not None:
            x = self.norm(x)
        return x


class LlamaForCausalLM(nn.Layer):
    """The whole model (default) or one pipeline stage of it.

    ``forward`` maps token ids [b, s] (or, after the first stage, hidden states [b, s, h]) to logits
    [b, s, vocab] (or, before the last stage, hidden states). With ``tie_word_embeddings`` the head
    reuses ``llama.embed_tokens.weight`` and there is no ``lm_head.weight``.
    """

    def __init__(
        self,
        config: LlamaConfig,
        layer_ids: Iterable[int] | None = None,
        first: bool = True,
        last: bool = True,
    ):
        super().__init__()
        if config.tie_word_embeddings and first != last:
            raise LlamaModelError(
                "tie_word_embeddings needs the embedding and the head on one stage"
            )
        self.config = config
        self.first, self.last = first, last
        layer_ids = range(config.num_hidden_layers) if layer_ids is None else list(layer_ids)
        self.layer_ids = list(layer_ids)
        self.llama = LlamaModel(config, self.layer_ids, embed=first, norm=last)
        self.lm_head = (
            _linear(config.hidden_size, config.vocab_size)
            if last and not config.tie_word_embeddings
            else None
        )

    def forward(self, x):
        h = self.llama(x)
        if not self.last:
            return h
        if self.lm_head is None:
            return paddle.matmul(h, self.llama.embed_tokens.weight, transpose_y=True)
        return self.lm_head(h)

    def init_weights(self, seed: int = 0) -> None:
        """Normal(0, initializer_range) for matrices, ones for norms, each drawn from a generator seeded
        by (seed, parameter name): a stage gets the same values as the whole model does."""
        std = self.config.initializer_range
        with paddle.no_grad():
            for name, param in self.named_parameters():
                if name.endswith("norm.weight"):
                    value = np.ones(param.shape, np.float32)
                else:
                    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
                    value = rng.standard_normal(param.shape, dtype=np.float32) * np.float32(std)
                param.set_value(value.astype(_numpy_dtype(param.dtype)))


def _numpy_dtype(dtype) -> str:
    return {paddle.float32: "float32", paddle.float64: "float64", paddle.float16: "float16"}.get(
        dtype, "float32"
    )

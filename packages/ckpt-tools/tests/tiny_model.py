"""The tiny LLaMA-shaped state dict the tests save with Paddle and expect back.

Values come from numpy with fixed seeds, so the tests know every tensor independently of any
merge. Shared by the saver script (run under paddle.distributed.launch) and the tests.
"""

from __future__ import annotations

import numpy as np

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
}
H, FF, V, L = 64, 128, 128, 2

# placement on the mp axis: col = Shard(1), row = Shard(0), rep = Replicate
_LAYER = {
    "self_attn.q_proj.weight": ((H, H), "col"),
    "self_attn.k_proj.weight": ((H, H), "col"),
    "self_attn.v_proj.weight": ((H, H), "col"),
    "self_attn.o_proj.weight": ((H, H), "row"),
    "mlp.gate_proj.weight": ((H, FF), "col"),
    "mlp.up_proj.weight": ((H, FF), "col"),
    "mlp.down_proj.weight": ((FF, H), "row"),
    "input_layernorm.weight": ((H,), "rep"),
    "post_attention_layernorm.weight": ((H,), "rep"),
}


def params() -> dict[str, tuple[tuple[int, ...], str]]:
    """PaddleNLP names -> (shape, mp placement), Linear weights [in, out]."""
    out = {"llama.embed_tokens.weight": ((V, H), "rep")}
    for i in range(L):
        for k, v in _LAYER.items():
            out[f"llama.layers.{i}.{k}"] = v
    out["llama.norm.weight"] = ((H,), "rep")
    out["lm_head.weight"] = ((H, V), "col")  # vocab-parallel
    return out


def stage_of(name: str, pp: int) -> int:
    if name.startswith("llama.embed_tokens"):
        return 0
    if name.startswith("llama.layers."):
        return int(name.split(".")[2]) * pp // L
    return pp - 1


def model_values(scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    return {
        n: (rng.standard_normal(s).astype(np.float32) * 0.05 * scale)
        for n, (s, _) in params().items()
    }


# Tensors of other dtypes, under the "extra." key group: name -> (array, mp placement).
# bf16 arrays are given as float32 values exactly representable in bf16.
def extra_values() -> dict[str, tuple[np.ndarray, str, str]]:
    rng = np.random.default_rng(99)
    bf = lambda shape: (rng.integers(-128, 128, shape) / 16.0).astype(np.float32)  # noqa: E731
    return {
        "bf16_col": (bf((16, 32)), "bfloat16", "col"),
        "bf16_dense": (bf((8,)), "bfloat16", "dense"),
        "int64_row": (rng.integers(-(2**40), 2**40, (16, 4)), "int64", "row"),
        "int32_rep": (rng.integers(-1000, 1000, (5,)).astype(np.int32), "int32", "rep"),
    }


def optimizer_values() -> dict[str, np.ndarray]:
    """A moment per Linear weight of layer 0, sharded on dp and mp at once."""
    m = model_values()
    return {
        f"{n}_moment1_0": m[n] * 3
        for n, (s, _) in params().items()
        if n.startswith("llama.layers.0.") and len(s) == 2
    }

"""Direct calls of the compiled operators. Use the top-level functions, which pick these or the
fallback; these raise when the library is not loaded.

Tensors are passed to the operators as they are: the kernels require equal dtypes among the inputs
of one call (the dispatcher in __init__ sends anything else to the fallback).
"""

from __future__ import annotations

from llama_ops._library import LIB
from llama_ops._paddle import paddle

_run = paddle._C_ops._run_custom_op


def _require() -> None:
    if not LIB.loaded:
        raise RuntimeError(f"llama-ops compiled kernels are not available: {LIB.reason}")


def rms_norm(x, weight, eps: float = 1e-6):
    _require()
    out, _inv_rms = _run("fused_rms_norm", x, weight, float(eps))
    return out


def apply_rope(q, k, cos, sin):
    _require()
    q_out, k_out = _run("fused_rope", q, k, cos, sin)
    return q_out, k_out


def swiglu(gate, up=None):
    _require()
    if up is None:
        return _run("fused_swiglu_packed", gate)[0]
    return _run("fused_swiglu", gate, up)[0]


def causal_softmax(scores, scale: float):
    _require()
    return _run("fused_causal_softmax", scores, float(scale))[0]


def decoder_layer(
    x, attn_norm, w_qkv, w_o, mlp_norm, w_gate_up, w_down, cos, sin, positions, mask, start,
    key_cache, value_cache, *, eps: float, num_heads: int, num_kv_heads: int,
):  # fmt: skip
    """One LLaMA decoder layer over the new tokens of a KV-cache step (inference: CPU, float32,
    no gradient); returns ``(x, key_cache, value_cache)``, the caches written in place.

    ``x`` [b*s, hidden]; weights [in, out], ``w_qkv`` = q|k|v and ``w_gate_up`` = gate|up side by
    side; ``cos``/``sin`` the rotary tables [max_positions, head_dim], read at ``positions``
    [b*s] int64; ``mask`` additive,
    [b, 1, 1, s, s] for a prefill or [b, kv_heads, group*s, capacity] for a step; ``start`` an int64
    tensor [1], the cache slot of the first new token; caches [b, kv_heads, capacity, head_dim]."""
    _require()
    out, keys, values = _run(
        "fused_decoder_layer", x, attn_norm, w_qkv, w_o, mlp_norm, w_gate_up, w_down, cos, sin,
        positions, mask, start, key_cache, value_cache, float(eps), int(num_heads), int(num_kv_heads),
    )  # fmt: skip
    return out, keys, values


def norm_head(x, norm, weight, *, eps: float, transposed_weight: bool = False):
    """``rms_norm(x, norm) @ weight`` in one call (inference: CPU, float32): the logits [b, vocab]
    float32 of the last hidden states ``x`` [b, hidden]; ``weight`` the LM head [hidden, vocab], or
    with ``transposed_weight`` a tied embedding [vocab, hidden]."""
    _require()
    return _run("fused_norm_head", x, norm, weight, float(eps), bool(transposed_weight))[0]

"""Fused RMSNorm, rotary embedding, SwiGLU and causal softmax for PaddlePaddle.

Each function runs the compiled kernel (Paddle custom operator, forward and backward) when the
library is loaded and the inputs suit it — on dist tensors, on each rank's shard when the placements
allow — and the identical pure-Paddle composition otherwise (placements a kernel cannot take, dist
values inside compiled programs, legacy static graphs, devices without kernels, LLAMA_OPS_DISABLE=1).
``backend()`` says which one the package can use; ``usage()`` / ``summary()`` count what each call
actually took.
"""

from __future__ import annotations

import numpy as np

from llama_ops import _local, fallback, fused
from llama_ops._dispatch import on_cpu, why_fallback
from llama_ops._library import LIB
from llama_ops._paddle import paddle
from llama_ops._usage import count, fallback_reasons, note_fallback, reset_usage, summary, usage
from llama_ops.version import __version__

__all__ = [
    "__version__",
    "apply_rope",
    "backend",
    "causal_softmax",
    "fallback",
    "fallback_reasons",
    "fused",
    "reset_usage",
    "rms_norm",
    "summary",
    "swiglu",
    "usage",
]


# The dispatch is host-side Python over tensor properties: dynamic-to-static must call it as it is
# (the operators it picks are recorded in the program), not rewrite its branches into graph control flow.
_host_logic = paddle.jit.not_to_static


def backend() -> str:
    """'fused (cpu kernels)' / 'fused (cpu+cuda kernels)', or 'fallback (<why>)'.

    Even with the fused backend, single calls may take the fallback (see ``usage()``; the first
    reason per operator is logged once at debug level on the "llama_ops" logger).
    """
    return f"fused ({LIB.reason})" if LIB.loaded else f"fallback ({LIB.reason})"


@_host_logic
def rms_norm(x, weight, eps: float = 1e-6):
    """x * rsqrt(mean(x², last axis) + eps) * weight; statistics in float32, output in x's dtype.

    x: [..., h], weight: [h] of x's dtype.
    """
    reason = why_fallback(x, weight)
    if reason is None:
        if not x.is_dist():
            count("rms_norm", "fused")
            return fused.rms_norm(x, weight, eps)
        call = _local.rms_norm(x, weight)
        if isinstance(call, _local.LocalCall):
            count("rms_norm", "local")
            return call.run(lambda x, w: fused.rms_norm(x, w, eps))
        reason = call
    note_fallback("rms_norm", reason)
    return fallback.rms_norm(x, weight, eps)


@_host_logic
def apply_rope(q, k, cos, sin):
    """Rotary embedding (rotate-half, as LLaMA / Hugging Face): returns (q_out, k_out).

    x_out = x * cos + rotate_half(x) * sin with rotate_half([x1, x2]) = [-x2, x1].
    q: [batch, seq, q_heads, head_dim], k: [batch, seq, kv_heads, head_dim] (Paddle's layout; the
    head counts may differ, as in grouped-query attention). cos/sin: [seq, head_dim] or
    [1, seq, 1, head_dim], or per sample [batch, seq, head_dim] / [batch, seq, 1, head_dim]; they
    get no gradient.
    """
    reason = why_fallback(q, k, cos, sin)
    if reason is None:
        if not (q.is_dist() or k.is_dist()):
            count("apply_rope", "fused")
            return fused.apply_rope(q, k, cos, sin)
        call = _local.apply_rope(q, k, cos, sin)
        if isinstance(call, _local.LocalCall):
            count("apply_rope", "local")
            return tuple(call.run(fused.apply_rope))
        reason = call
    note_fallback("apply_rope", reason)
    return fallback.apply_rope(q, k, cos, sin)


@_host_logic
def swiglu(gate, up=None):
    """silu(gate) * up. With up=None, gate is one [..., 2 * inner] tensor holding [gate | up] on its
    last axis (a fused gate_up projection; paddle.incubate.nn.functional.swiglu's layout)."""
    tensors = (gate,) if up is None else (gate, up)
    reason = why_fallback(*tensors)
    if reason is None:
        if not any(t.is_dist() for t in tensors):
            count("swiglu", "fused")
            return fused.swiglu(gate, up)
        call = _local.swiglu(gate, up)
        if isinstance(call, _local.LocalCall):
            count("swiglu", "local")
            return call.run(lambda *t: fused.swiglu(*t))
        reason = call
    note_fallback("swiglu", reason)
    return fallback.swiglu(gate, up)


@_host_logic
def causal_softmax(scores, scale: float):
    """softmax(scores * scale + causal mask) on the last axis of attention scores [..., s, s]: row i
    (a query position) keeps columns j <= i, the rest get probability 0. ``scale`` > 0 (1/√d) is
    rounded to float32 (the kernel's attribute type) on both paths. A row holding a NaN or an
    infinite score comes out NaN, so a broken head shows in the loss.

    One pass instead of a scaled copy, a mask add and a softmax, and one pass back. CPU only: GPU
    tensors take the fallback (on GPU, attention belongs to a flash-attention kernel).
    """
    shape = scores.shape
    if len(shape) < 2 or (shape[-1] >= 0 and shape[-2] >= 0 and shape[-1] != shape[-2]):
        raise ValueError(f"causal_softmax: scores must be [..., seq, seq], got {list(shape)}")
    if not scale > 0:
        raise ValueError(f"causal_softmax: scale must be positive, got {scale}")
    scale = float(np.float32(scale))
    reason = why_fallback(scores)
    if reason is None and not on_cpu(scores):
        reason = "causal_softmax has CPU kernels only"
    if reason is None:
        if not scores.is_dist():
            count("causal_softmax", "fused")
            return fused.causal_softmax(scores, scale)
        call = _local.causal_softmax(scores)
        if isinstance(call, _local.LocalCall):
            count("causal_softmax", "local")
            return call.run(lambda s: fused.causal_softmax(s, scale))
        reason = call
    note_fallback("causal_softmax", reason)
    return fallback.causal_softmax(scores, scale)

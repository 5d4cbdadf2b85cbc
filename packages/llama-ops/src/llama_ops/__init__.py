"""Fused RMSNorm, rotary embedding, SwiGLU and causal softmax for PaddlePaddle.

Each function runs the compiled kernel (Paddle custom operator, forward and backward) when the
library is loaded and the inputs suit it, and the identical pure-Paddle composition otherwise (dist
tensors, legacy static graphs, devices without kernels, LLAMA_OPS_DISABLE=1). ``backend()`` says
which one the package uses and why.
"""

from __future__ import annotations

import numpy as np

from llama_ops import fallback, fused
from llama_ops._dispatch import note, on_cpu, why_fallback
from llama_ops._library import LIB
from llama_ops.version import __version__

__all__ = [
    "__version__",
    "apply_rope",
    "backend",
    "causal_softmax",
    "fallback",
    "fused",
    "rms_norm",
    "swiglu",
]


def backend() -> str:
    """'fused (cpu kernels)' / 'fused (cpu+cuda kernels)', or 'fallback (<why>)'.

    Even with the fused backend, dist tensors, legacy static graphs and devices without kernels take
    the fallback per call (logged once per reason at debug level on the "llama_ops" logger).
    """
    return f"fused ({LIB.reason})" if LIB.loaded else f"fallback ({LIB.reason})"


def rms_norm(x, weight, eps: float = 1e-6):
    """x * rsqrt(mean(x², last axis) + eps) * weight; statistics in float32, output in x's dtype.

    x: [..., h], weight: [h] of x's dtype.
    """
    reason = why_fallback(x, weight)
    if reason is None:
        return fused.rms_norm(x, weight, eps)
    note("rms_norm", reason)
    return fallback.rms_norm(x, weight, eps)


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
        return fused.apply_rope(q, k, cos, sin)
    note("apply_rope", reason)
    return fallback.apply_rope(q, k, cos, sin)


def swiglu(gate, up=None):
    """silu(gate) * up. With up=None, gate is one [..., 2 * inner] tensor holding [gate | up] on its
    last axis (a fused gate_up projection; paddle.incubate.nn.functional.swiglu's layout)."""
    tensors = (gate,) if up is None else (gate, up)
    reason = why_fallback(*tensors)
    if reason is None:
        return fused.swiglu(gate, up)
    note("swiglu", reason)
    return fallback.swiglu(gate, up)


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
        return fused.causal_softmax(scores, scale)
    note("causal_softmax", reason)
    return fallback.causal_softmax(scores, scale)

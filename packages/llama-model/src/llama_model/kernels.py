"""The model's numerical primitives: llama-ops' fused kernels when that package is importable, plain
Paddle otherwise. This module is the only place that makes that choice.

Contract shared with llama-ops (same numbers within fp32 tolerance):
    rms_norm(x, weight, eps)       x: [..., h], weight: [h]
    apply_rope(q, k, cos, sin)     q: [b, s, nq, d], k: [b, s, nk, d], cos/sin: [s, d] (rotate-half layout)
    swiglu(gate, up)               silu(gate) * up
    causal_softmax(scores, scale)  softmax(scores * scale + causal mask), scores: [..., s, s]

``rms_norm``, ``apply_rope`` and ``swiglu`` are the chosen ones; ``plain`` holds the plain-Paddle three.
``causal_attention`` uses llama-ops' causal softmax on CPU when the installed llama-ops has it.
``for_inference(dtype, on_cpu)`` gives the same primitives called straight, for decoding.
``no_strided_views()`` is the context the model's compute runs in on CPU (see _paddle.py), for
callers that drive the primitives themselves (llama-infer's decoder). It sets a process-wide Paddle
flag for the duration of the block: threads running Paddle ops concurrently see it too.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

from llama_model._paddle import no_strided_views, paddle

F = paddle.nn.functional

# LLAMA_MODEL_NO_OPS=1 switches llama-ops off: lets tests and benchmarks compare both paths in one
# environment.
_SWITCHED_OFF = bool(os.environ.get("LLAMA_MODEL_NO_OPS"))
try:  # the optional fused kernels; absent is the normal case on a plain install
    if _SWITCHED_OFF:
        raise ImportError
    import llama_ops as _ops
except ImportError:
    _ops = None


def backend() -> str:
    """'llama-ops:<its backend>' when the fused kernels are in use, else 'paddle'."""
    return f"llama-ops:{_ops.backend()}" if _ops is not None else "paddle"


def usage() -> dict[str, dict[str, int]] | None:
    """Calls per llama-ops operator and path ("fused", "local" on dist shards, "fallback") since the
    last ``reset_usage()``; None without llama-ops (every primitive is plain Paddle)."""
    return _ops.usage() if _ops is not None else None


def reset_usage() -> None:
    if _ops is not None:
        _ops.reset_usage()


def usage_summary() -> str:
    """What the primitives actually ran since the last ``reset_usage()``, one line for a run's log."""
    if _ops is None:
        if _SWITCHED_OFF:
            return "plain Paddle (llama-ops switched off by LLAMA_MODEL_NO_OPS)"
        return "plain Paddle (llama-ops not installed)"
    return _ops.summary()


def _rms_norm(x, weight, eps: float):
    variance = (x * x).mean(-1, keepdim=True)
    return x * paddle.rsqrt(variance + eps) * weight


def _apply_rope(q, k, cos, sin):
    # rotate_half(x) = [-x2, x1] = roll(x, d/2) * [-1…, +1…]: the sign goes into sin, so the rotation
    # is one roll, whose backward is a roll, instead of two slices and a concat (slice backward
    # writes a zero-filled copy of the whole input).
    half = cos.shape[-1] // 2
    sign = paddle.concat(
        [paddle.full([half], -1.0, sin.dtype), paddle.full([half], 1.0, sin.dtype)]
    )
    cos = cos.unsqueeze([0, 2])  # [s, d] -> [1, s, 1, d]: broadcast over batch and heads
    sin = (sin * sign).unsqueeze([0, 2])
    return _rotate(q, cos, sin, half), _rotate(k, cos, sin, half)


_EXPAND_ROPE_TABLES = not paddle.is_compiled_with_cuda()


def _rotate(x, cos, sin, half: int):
    if _EXPAND_ROPE_TABLES and not x.is_dist():
        # Paddle's CPU multiply is far slower when it broadcasts over a middle axis (the heads)
        # than on equal shapes, so the tables are expanded to q's and k's shape first (figures in
        # llama-model's README, "Performance"). The cost: in training the expanded tables are kept
        # for the backward (two q- and two k-sized tensors per layer). CPU builds only; dist
        # tensors keep the broadcast, which their placements know.
        cos, sin = paddle.expand_as(cos, x), paddle.expand_as(sin, x)
    return x * cos + paddle.roll(x, half, axis=-1) * sin


def _swiglu(gate, up):
    return F.silu(gate) * up


# The plain-Paddle primitives whatever is installed, for programs that must not depend on llama-ops:
# an exported inference program is loaded by processes that never import it.
plain = SimpleNamespace(rms_norm=_rms_norm, apply_rope=_apply_rope, swiglu=_swiglu)

if _ops is not None:
    rms_norm = _ops.rms_norm
    apply_rope = _ops.apply_rope
    swiglu = _ops.swiglu
else:
    rms_norm = _rms_norm
    apply_rope = _apply_rope
    swiglu = _swiglu


def for_inference(dtype, on_cpu: bool) -> SimpleNamespace:
    """rms_norm / apply_rope / swiglu / causal_attention for eager tensors of ``dtype`` outside
    autograd and off any mesh (decoding), called straight: llama-ops' compiled operators without its
    per-call dispatch (which checks what a decoder knows once), and on CPU in float32 Paddle's own
    fused RMSNorm kernel, cheaper per call than a custom operator. A decode step calls these tens of
    times on a few kilobytes each, where the per-call costs outweigh the kernels. Same numbers as
    the chosen primitives within fp32 rounding."""
    ops = SimpleNamespace(
        rms_norm=rms_norm, apply_rope=apply_rope, swiglu=swiglu, causal_attention=causal_attention
    )
    if _compiled_kernels(on_cpu):
        ops.rms_norm, ops.apply_rope, ops.swiglu = (
            _ops.fused.rms_norm, _ops.fused.apply_rope, _ops.fused.swiglu
        )  # fmt: skip
    if on_cpu and dtype == paddle.float32:
        from llama_model.paddle_compat.kernels import cpu_rms_norm

        ops.rms_norm = cpu_rms_norm() or ops.rms_norm
    return ops


def _compiled_kernels(on_cpu: bool) -> bool:
    """Whether llama-ops' compiled operators are loaded for the device (CPU, or CUDA too)."""
    return _ops is not None and _ops.backend().startswith(
        "fused (cpu" if on_cpu else "fused (cpu+cuda"
    )


def fused_layers_available(dtype: str = "float32") -> str | None:
    """None when ``fused_layers()`` can be used here for a model of ``dtype``, else why not."""
    if dtype != "float32":
        return f"llama-ops' fused decoder layer is float32 only, the model is {dtype}"
    if paddle.is_compiled_with_cuda():
        return "llama-ops' fused decoder layer is a CPU kernel; this Paddle is a CUDA build"
    if _ops is None:
        if _SWITCHED_OFF:
            return "llama-ops is switched off (LLAMA_MODEL_NO_OPS)"
        return "llama-ops is not installed"
    if not _compiled_kernels(on_cpu=True) or not hasattr(_ops.fused, "decoder_layer"):
        return f"llama-ops {_ops.__version__} has no compiled decoder layer ({_ops.backend()})"
    return None


def fused_layers() -> SimpleNamespace:
    """The plain primitives plus ``decoder_layer``: a whole decoder layer over the new tokens of a
    KV-cache step in one llama-ops kernel (CPU, float32, forward only) over
    ``functional.FusedLayerWeights``, for :func:`functional.forward`; the rotary tables whole, read
    at ``positions`` in the kernel; and ``norm_head``, the final RMSNorm and the LM head in one. An
    inference program of a small model spends most of a step on per-operation overhead; one kernel
    per layer is ~25 fewer operations. Raises RuntimeError where ``fused_layers_available()`` says
    why not."""
    why = fused_layers_available()
    if why is not None:
        raise RuntimeError(f"no fused decoder layer: {why}")

    def decoder_layer(x, w, heads, eps, cos, sin, positions, mask, start, keys, values):
        if isinstance(start, int):
            start = paddle.to_tensor([start], dtype="int64", place=paddle.CPUPlace())
        return _ops.fused.decoder_layer(
            x, w.attn_norm, w.qkv, w.o, w.mlp_norm, w.gate_up, w.down, cos, sin, positions, mask,
            start, keys, values, eps=eps, num_heads=heads.num_heads,
            num_kv_heads=heads.num_kv_heads,
        )  # fmt: skip

    def norm_head(x, norm, weight, eps, transposed_weight):
        return _ops.fused.norm_head(x, norm, weight, eps=eps, transposed_weight=transposed_weight)

    return SimpleNamespace(**vars(plain), decoder_layer=decoder_layer, norm_head=norm_head)


def causal_attention(q, k, v):
    """softmax(q kᵀ/√d + causal mask) v with grouped-query heads; q: [b, s, nq, d], k/v: [b, s, nk, d].

    Returns [b, s, nq, d]. On GPU this is Paddle's scaled_dot_product_attention (flash attention); on
    CPU Paddle's SDPA is a generic composite, so the same math is written out here.
    """
    if paddle.is_compiled_with_cuda():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    b, s, nq, d = q.shape
    nk = k.shape[2]
    q = q.transpose([0, 2, 1, 3])  # [b, nq, s, d]
    k = k.transpose([0, 2, 1, 3])
    v = v.transpose([0, 2, 1, 3])
    if nk != nq:  # each key/value head serves nq // nk consecutive query heads
        k = k.unsqueeze(2).expand([b, nk, nq // nk, s, d]).reshape([b, nq, s, d])
        v = v.unsqueeze(2).expand([b, nk, nq // nk, s, d]).reshape([b, nq, s, d])
    # scale, mask and softmax in one pass each way (on dist tensors: on each rank's heads)
    if _causal_softmax is not None:
        probs = _causal_softmax(paddle.matmul(q, k, transpose_y=True), d**-0.5)
    else:
        # 1/√d applied to q ([b, nq, s, d]) rather than to the scores ([b, nq, s, s]): fewer elements.
        scores = paddle.matmul(q * (d**-0.5), k, transpose_y=True)
        probs = F.softmax(scores + _causal_mask(s, scores.dtype), axis=-1)
    return paddle.matmul(probs, v).transpose([0, 2, 1, 3])


# llama-ops 0.2 and later; an older llama-ops leaves attention to plain Paddle.
_causal_softmax = getattr(_ops, "causal_softmax", None)


_MASKS: dict = {}


def _causal_mask(s: int, dtype):
    if not paddle.in_dynamic_mode():  # a cached eager tensor must not leak into a static program
        return paddle.triu(paddle.full([s, s], float("-inf"), dtype=dtype), diagonal=1)
    key = (s, str(dtype))
    if key not in _MASKS:
        _MASKS[key] = paddle.triu(paddle.full([s, s], float("-inf"), dtype=dtype), diagonal=1)
    return _MASKS[key]


__all__ = [
    "apply_rope",
    "backend",
    "causal_attention",
    "for_inference",
    "fused_layers",
    "fused_layers_available",
    "no_strided_views",
    "plain",
    "reset_usage",
    "rms_norm",
    "swiglu",
    "usage",
    "usage_summary",
]

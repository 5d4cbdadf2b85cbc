"""The pure-Paddle twins of the fused kernels: the same math written with Paddle's own operators.

They run wherever Paddle runs (any device, dist tensors, every graph mode) and are the reference the
compiled kernels are tested against. Half-precision inputs are computed in float32 and cast back,
like the kernels; note that Paddle's CPU build has no bfloat16/float16 kernels for several of the
operators used here, so on CPU half precision is served by the compiled kernels only.
"""

from __future__ import annotations

from llama_ops._paddle import paddle

F = paddle.nn.functional

_HALF = (paddle.float16, paddle.bfloat16)


def rms_norm(x, weight, eps: float = 1e-6):
    """x * rsqrt(mean(x², last axis) + eps) * weight, statistics in float32 (float64 for float64)."""
    if x.dtype in _HALF:
        xf = x.astype(paddle.float32)
        out = (
            xf
            * paddle.rsqrt((xf * xf).mean(-1, keepdim=True) + eps)
            * weight.astype(paddle.float32)
        )
        return out.astype(x.dtype)
    return x * paddle.rsqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def rotate_half(x):
    """[x1, x2] -> [-x2, x1] on the last axis."""
    half = x.shape[-1] // 2
    return paddle.concat([-x[..., half:], x[..., :half]], axis=-1)


def rope_table(table, ndim: int = 4):
    """cos/sin as [s, d], [b, s, d], [1, s, 1, d] or [b, s, 1, d] -> broadcastable to [b, s, h, d]."""
    if table.ndim == 2:
        return table.unsqueeze([0, 2])
    if table.ndim == 3:
        return table.unsqueeze(2)
    return table


def apply_rope(q, k, cos, sin):
    """Rotary embedding, rotate-half convention: x * cos + rotate_half(x) * sin for x in (q, k).

    q: [b, s, hq, d], k: [b, s, hk, d]; cos/sin: [s, d] (or [1, s, 1, d]), or per sample
    [b, s, d] (or [b, s, 1, d]).
    """
    cos, sin = rope_table(cos), rope_table(sin)
    if q.dtype in _HALF:
        f32 = paddle.float32
        qf, kf, cf, sf = q.astype(f32), k.astype(f32), cos.astype(f32), sin.astype(f32)
        q_out = qf * cf + rotate_half(qf) * sf
        k_out = kf * cf + rotate_half(kf) * sf
        return q_out.astype(q.dtype), k_out.astype(k.dtype)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def swiglu(gate, up=None):
    """silu(gate) * up; with up=None, gate is [..., 2 * inner] holding [gate | up] on the last axis."""
    if up is None:
        gate, up = paddle.chunk(gate, 2, axis=-1)
    if gate.dtype in _HALF:
        out = F.silu(gate.astype(paddle.float32)) * up.astype(paddle.float32)
        return out.astype(gate.dtype)
    return F.silu(gate) * up


def causal_softmax(scores, scale: float):
    """softmax(scores * scale + causal mask) on the last axis of scores [..., s, s]: row i keeps
    columns j <= i. Computed in float32 for half-precision inputs."""
    s = scores.shape[-1]
    x = scores.astype(paddle.float32) if scores.dtype in _HALF else scores
    mask = paddle.triu(paddle.full([s, s], float("-inf"), dtype=x.dtype), diagonal=1)
    return F.softmax(x * scale + mask, axis=-1).astype(scores.dtype)

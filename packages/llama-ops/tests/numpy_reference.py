"""Independent float64 numpy versions of the three operations and their gradients, written from the
formulas (not from the package) so that both of its implementations are checked against them."""

import numpy as np


def rms_norm(x, w, eps):
    inv = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return x * inv * w


def rms_norm_grads(x, w, eps, g):
    h = x.shape[-1]
    inv = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    n = x * inv
    gw = g * w
    dx = inv * (gw - n * (gw * n).sum(-1, keepdims=True) / h)
    dw = (g * n).reshape(-1, h).sum(0)
    return dx, dw


def _table(t):  # [s, d] or [b, s, d] -> broadcastable to [b, s, h, d]
    return t[None, :, None, :] if t.ndim == 2 else t[:, :, None, :]


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * _table(cos) + rotated * _table(sin)


def rope_grad(g, cos, sin):
    # out = x*c + R(x)*s with R linear; dL/dx = g*c + R^T(g*s), R^T([y1, y2]) = [y2, -y1]
    half = g.shape[-1] // 2
    gs = g * _table(sin)
    return g * _table(cos) + np.concatenate([gs[..., half:], -gs[..., :half]], axis=-1)


def silu(x):
    return x / (1.0 + np.exp(-x))


def swiglu(gate, up):
    return silu(gate) * up


def swiglu_grads(gate, up, g):
    s = 1.0 / (1.0 + np.exp(-gate))
    return g * up * (s + gate * s * (1.0 - s)), g * gate * s


def causal_softmax(x, scale):
    """softmax(x * scale + causal mask) on the last axis of [..., s, s]: row i keeps j <= i."""
    s = x.shape[-1]
    y = np.where(np.tril(np.ones((s, s), dtype=bool)), x * scale, -np.inf)
    e = np.exp(y - y.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def causal_softmax_grad(p, g, scale):
    return scale * p * (g - (p * g).sum(-1, keepdims=True))

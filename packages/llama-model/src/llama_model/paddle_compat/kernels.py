"""Paddle's own fused kernels that a build may or may not register for a device. Verified for
Paddle 3.3 (the CPU wheel registers ``fused_rms_norm`` for float32)."""

from __future__ import annotations

import functools

VERIFIED_FOR = ("3.3",)


@functools.cache
def cpu_rms_norm():
    """``rms_norm(x, weight, eps)`` through ``paddle.incubate.nn.functional.fused_rms_norm`` (a
    builtin kernel: about a third of a custom operator's cost per call at decode sizes), or None
    where this build has no CPU kernel for it. Forward only: its CPU backward is not relied on."""
    import paddle
    from paddle.incubate.nn.functional import fused_rms_norm

    try:
        probe = paddle.to_tensor([[1.0, 2.0]], place=paddle.CPUPlace())
        fused_rms_norm(probe, paddle.to_tensor([1.0, 1.0], place=paddle.CPUPlace()), None, 1e-6, 1)
    except Exception:  # NotFound: the kernel is not registered for the CPU in this build
        return None

    def rms_norm(x, weight, eps: float):
        return fused_rms_norm(x, weight, None, eps, len(x.shape) - 1)[0]

    return rms_norm

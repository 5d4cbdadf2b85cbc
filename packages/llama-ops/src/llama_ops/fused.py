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

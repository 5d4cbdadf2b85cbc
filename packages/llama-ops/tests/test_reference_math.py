"""Both implementations against the independent numpy formulas in float64, and the fallback's
gradients against central finite differences (so the numpy gradient formulas are checked too)."""

import numpy as np
import paddle
import pytest
from conftest import FALLBACK_REQUESTED
from numpy_reference import (
    causal_softmax,
    causal_softmax_grad,
    rms_norm,
    rms_norm_grads,
    rope,
    rope_grad,
    swiglu,
    swiglu_grads,
)

import llama_ops

IMPLS = [pytest.param(llama_ops.fallback, id="fallback")]
if not FALLBACK_REQUESTED:
    IMPLS.append(pytest.param(llama_ops.fused, id="fused"))


def _t(a, grad=True):
    t = paddle.to_tensor(a)
    t.stop_gradient = not grad
    return t


@pytest.mark.parametrize("impl", IMPLS)
def test_rms_norm_matches_formula(impl, rng):
    x, w, g = rng.normal(size=(3, 5, 37)), rng.normal(size=37), rng.normal(size=(3, 5, 37))
    xt, wt = _t(x), _t(w)
    out = impl.rms_norm(xt, wt, 1e-5)
    dx, dw = paddle.grad([out], [xt, wt], [_t(g, False)])
    np.testing.assert_allclose(out.numpy(), rms_norm(x, w, 1e-5), rtol=1e-12, atol=1e-12)
    ex, ew = rms_norm_grads(x, w, 1e-5, g)
    np.testing.assert_allclose(dx.numpy(), ex, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dw.numpy(), ew, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared-table", "per-sample-table"])
def test_rope_matches_formula_gqa(impl, per_sample, rng):
    b, s, hq, hk, d = 2, 6, 4, 2, 10
    q, k = rng.normal(size=(b, s, hq, d)), rng.normal(size=(b, s, hk, d))
    shape = (b, s, d) if per_sample else (s, d)
    cos, sin = rng.normal(size=shape), rng.normal(size=shape)
    gq, gk = rng.normal(size=q.shape), rng.normal(size=k.shape)
    qt, kt = _t(q), _t(k)
    q_out, k_out = impl.apply_rope(qt, kt, _t(cos, False), _t(sin, False))
    dq, dk = paddle.grad([q_out, k_out], [qt, kt], [_t(gq, False), _t(gk, False)])
    np.testing.assert_allclose(q_out.numpy(), rope(q, cos, sin), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(k_out.numpy(), rope(k, cos, sin), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dq.numpy(), rope_grad(gq, cos, sin), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dk.numpy(), rope_grad(gk, cos, sin), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("packed", [False, True], ids=["gate-up", "packed-gate_up"])
def test_swiglu_matches_formula(impl, packed, rng):
    gate, up, g = (rng.normal(size=(4, 3, 23)) * 3 for _ in range(3))
    if packed:
        xt = _t(np.concatenate([gate, up], axis=-1))
        out = impl.swiglu(xt)
        (dx,) = paddle.grad([out], [xt], [_t(g, False)])
        dgate, dup = dx.numpy()[..., :23], dx.numpy()[..., 23:]
    else:
        gt, ut = _t(gate), _t(up)
        out = impl.swiglu(gt, ut)
        dgate, dup = (t.numpy() for t in paddle.grad([out], [gt, ut], [_t(g, False)]))
    np.testing.assert_allclose(out.numpy(), swiglu(gate, up), rtol=1e-12, atol=1e-12)
    eg, eu = swiglu_grads(gate, up, g)
    np.testing.assert_allclose(dgate, eg, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dup, eu, rtol=1e-10, atol=1e-12)


def _numeric_grad(f, arrays, index, h=1e-6):
    """d sum(f(*arrays) * probe) / d arrays[index] by central differences; f returns numpy."""
    base = arrays[index]
    grad = np.zeros_like(base)
    for i in np.ndindex(base.shape):
        plus = [a.copy() for a in arrays]
        minus = [a.copy() for a in arrays]
        plus[index][i] += h
        minus[index][i] -= h
        grad[i] = (f(*plus) - f(*minus)) / (2 * h)
    return grad


CASES = {
    "rms_norm": (lambda x, w: llama_ops.fallback.rms_norm(x, w, 1e-6), [(2, 3, 5), (5,)]),
    "rope_q": (
        lambda q, k: llama_ops.fallback.apply_rope(q, k, *_ROPE_TABLES)[0],
        [(1, 3, 2, 4), (1, 3, 1, 4)],
    ),
    "rope_k": (
        lambda q, k: llama_ops.fallback.apply_rope(q, k, *_ROPE_TABLES)[1],
        [(1, 3, 2, 4), (1, 3, 1, 4)],
    ),
    "swiglu": (lambda g, u: llama_ops.fallback.swiglu(g, u), [(2, 7), (2, 7)]),
    "swiglu_packed": (lambda x: llama_ops.fallback.swiglu(x), [(2, 8)]),
}
_tables = np.random.default_rng(7).normal(size=(2, 3, 4))
_ROPE_TABLES = (paddle.to_tensor(_tables[0]), paddle.to_tensor(_tables[1]))


@pytest.mark.parametrize("case", list(CASES))
def test_fallback_gradients_match_finite_differences(case, rng):
    fn, shapes = CASES[case]
    arrays = [rng.normal(size=s) for s in shapes]
    probe = rng.normal(size=fn(*(paddle.to_tensor(a) for a in arrays)).shape)

    def scalar(*arrs):
        return float((fn(*(paddle.to_tensor(a) for a in arrs)).numpy() * probe).sum())

    tensors = [_t(a) for a in arrays]
    analytic = paddle.grad([fn(*tensors)], tensors, [_t(probe, False)], allow_unused=True)
    for i, a in enumerate(analytic):
        got = np.zeros(shapes[i]) if a is None else a.numpy()
        np.testing.assert_allclose(got, _numeric_grad(scalar, arrays, i), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("impl", IMPLS)
def test_causal_softmax_matches_formula(impl, rng):
    x, g = rng.normal(size=(2, 3, 7, 7)) * 4, rng.normal(size=(2, 3, 7, 7))
    xt = _t(x)
    out = impl.causal_softmax(xt, 0.375)  # exact in float32: the kernel's attribute is float32
    (dx,) = paddle.grad([out], [xt], [_t(g, False)])
    want = causal_softmax(x, 0.375)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        dx.numpy(), causal_softmax_grad(want, g, 0.375), rtol=1e-10, atol=1e-12
    )
    # what causality means: nothing above the diagonal, in the output or the gradient
    upper = np.triu(np.ones((7, 7), dtype=bool), k=1)
    if impl is llama_ops.fused:
        assert (out.numpy()[..., upper] == 0).all() and (dx.numpy()[..., upper] == 0).all()
    else:  # Paddle's softmax floors probabilities at exp(-64) ≈ 1.6e-28, not 0
        assert np.abs(out.numpy()[..., upper]).max() <= 1e-27
        assert np.abs(dx.numpy()[..., upper]).max() <= 1e-27

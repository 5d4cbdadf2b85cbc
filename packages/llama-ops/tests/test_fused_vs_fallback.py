"""The compiled kernels against the pure-Paddle fallback, forward and gradients, over the shapes that
break vectorised kernels: a hidden size that is no multiple of the vector width, one token, many
rows (so the OpenMP split and the per-thread weight-gradient slices are exercised), GQA heads."""

import numpy as np
import paddle
import pytest
from conftest import FALLBACK_REQUESTED

import llama_ops

pytestmark = pytest.mark.skipif(FALLBACK_REQUESTED, reason="LLAMA_OPS_DISABLE is set")

TOL = {"float32": dict(rtol=2e-5, atol=2e-5), "float64": dict(rtol=1e-12, atol=1e-12)}


def _t(a, dtype, grad=True):
    t = paddle.to_tensor(a).astype(dtype)
    t.stop_gradient = not grad
    return t


def _compare(fn, arrays, dtype, grad_of, tol):
    """Runs fn on fresh tensors through fused and fallback; compares outputs and the gradients of
    the inputs named by grad_of under the same random output gradients."""
    results = []
    for impl in (llama_ops.fused, llama_ops.fallback):
        ts = [_t(a, dtype, grad=i in grad_of) for i, a in enumerate(arrays)]
        outs = fn(impl, *ts)
        outs = list(outs) if isinstance(outs, tuple) else [outs]
        probes = [
            paddle.to_tensor(np.random.default_rng(99 + j).normal(size=o.shape)).astype(dtype)
            for j, o in enumerate(outs)
        ]
        grads = paddle.grad(outs, [ts[i] for i in grad_of], probes)
        results.append([o.astype("float64").numpy() for o in outs + list(grads)])
    for got, want in zip(*results):
        # Reductions (the weight gradient sums thousands of rows) differ in summation order, so the
        # absolute tolerance scales with the result's magnitude.
        scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
        np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["atol"] * scale)


# (0, 8): no rows, the weight gradient is zeros; (2, 0): an empty hidden axis (the CPU backward
# used to divide by it).
RMS_SHAPES = [(1, 1, 4096), (2, 3, 67), (1, 1, 1), (4096, 37), (3, 7, 128), (0, 8), (2, 0)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", RMS_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_rms_norm(shape, dtype, rng):
    x, w = rng.normal(size=shape), rng.normal(size=shape[-1])
    _compare(lambda m, x, w: m.rms_norm(x, w, 1e-6), [x, w], dtype, (0, 1), TOL[dtype])


ROPE_SHAPES = [  # (batch, seq, q_heads, kv_heads, head_dim)
    (1, 1, 1, 1, 2),
    (2, 5, 4, 4, 6),
    (2, 9, 8, 2, 18),  # GQA 4:1, head_dim/2 = 9 (odd)
    (64, 16, 4, 1, 128),  # large batch, MQA
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", ROPE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("table", ["s,d", "1,s,1,d", "b,s,1,d"])
def test_rope(shape, table, dtype, rng):
    b, s, hq, hk, d = shape
    tshape = {"s,d": (s, d), "1,s,1,d": (1, s, 1, d), "b,s,1,d": (b, s, 1, d)}[table]
    angles = rng.uniform(0, 10, size=tshape)
    arrays = [
        rng.normal(size=(b, s, hq, d)),
        rng.normal(size=(b, s, hk, d)),
        np.cos(angles),
        np.sin(angles),
    ]
    _compare(lambda m, *a: m.apply_rope(*a), arrays, dtype, (0, 1), TOL[dtype])


SWIGLU_SHAPES = [(1, 1), (3, 67), (2048, 33), (2, 5, 100)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SWIGLU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_swiglu(shape, dtype, rng):
    # Wide range so both saturated ends of the sigmoid are covered.
    gate, up = rng.normal(size=shape) * 8, rng.normal(size=shape)
    _compare(lambda m, g, u: m.swiglu(g, u), [gate, up], dtype, (0, 1), TOL[dtype])
    packed = np.concatenate([gate, up], axis=-1)
    _compare(lambda m, x: m.swiglu(x), [packed], dtype, (0,), TOL[dtype])


CAUSAL_SHAPES = [(1, 1), (2, 3, 5, 5), (2, 4, 67, 67), (1, 2, 300, 300)]  # the last: parallel rows


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", CAUSAL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_causal_softmax(shape, dtype, rng):
    scores = rng.normal(size=shape) * 6  # peaked rows, so the max subtraction matters
    _compare(lambda m, x: m.causal_softmax(x, 0.125), [scores], dtype, (0,), TOL[dtype])


def test_causal_softmax_refuses_non_square_scores(rng):
    x = paddle.to_tensor(rng.normal(size=(2, 3, 4)).astype("float32"))
    square = paddle.to_tensor(rng.normal(size=(2, 3, 3)).astype("float32"))
    for call in (llama_ops.fused.causal_softmax, llama_ops.causal_softmax):  # kernel and wrapper
        with pytest.raises(Exception, match="scores must be"):
            call(x, 0.5)
        with pytest.raises(Exception, match="scale must be positive"):
            call(square, -1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_causal_softmax_rows_with_a_non_finite_score_are_nan(bad, rng):
    """As in the composed softmax: a broken score must reach the loss, not vanish in a clamp."""
    x = rng.normal(size=(2, 6, 6)).astype("float32")
    x[1, 4, 2] = bad  # row 4 sees column 2
    fused = llama_ops.fused.causal_softmax(paddle.to_tensor(x), 0.5).numpy()
    fallback = llama_ops.fallback.causal_softmax(paddle.to_tensor(x), 0.5).numpy()
    assert np.isnan(fused[1, 4]).all() and np.isnan(fallback[1, 4]).all()
    healthy = np.ones((2, 6), dtype=bool)
    healthy[1, 4] = False
    np.testing.assert_allclose(fused[healthy], fallback[healthy], rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_kernels_match_float32_math(dtype, rng):
    """On CPU Paddle lacks half kernels for the fallback's operators, so the reference is the
    fallback in float32 rounded to the half type; the kernels also compute in float32."""
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == "bfloat16" else dict(rtol=2e-3, atol=2e-3)
    x, w = rng.normal(size=(5, 67)), rng.normal(size=67)
    got = llama_ops.fused.rms_norm(_t(x, dtype, False), _t(w, dtype, False))
    want = llama_ops.fallback.rms_norm(
        _t(x, dtype, False).astype("float32"), _t(w, dtype, False).astype("float32")
    )
    np.testing.assert_allclose(
        got.astype("float32").numpy(), want.astype(dtype).astype("float32").numpy(), **tol
    )
    gate, up = rng.normal(size=(5, 67)) * 4, rng.normal(size=(5, 67))
    got = llama_ops.fused.swiglu(_t(gate, dtype, False), _t(up, dtype, False))
    want = llama_ops.fallback.swiglu(
        _t(gate, dtype, False).astype("float32"), _t(up, dtype, False).astype("float32")
    )
    np.testing.assert_allclose(
        got.astype("float32").numpy(), want.astype(dtype).astype("float32").numpy(), **tol
    )
    scores = rng.normal(size=(2, 9, 9)) * 3
    got = llama_ops.fused.causal_softmax(_t(scores, dtype, False), 0.5)
    want = llama_ops.fallback.causal_softmax(_t(scores, dtype, False).astype("float32"), 0.5)
    np.testing.assert_allclose(
        got.astype("float32").numpy(), want.astype(dtype).astype("float32").numpy(), **tol
    )
    q, cos = rng.normal(size=(2, 3, 2, 8)), rng.normal(size=(3, 8))
    got, _ = llama_ops.fused.apply_rope(*(_t(a, dtype, False) for a in (q, q, cos, cos)))
    want, _ = llama_ops.fallback.apply_rope(
        *(_t(a, dtype, False).astype("float32") for a in (q, q, cos, cos))
    )
    np.testing.assert_allclose(
        got.astype("float32").numpy(), want.astype(dtype).astype("float32").numpy(), **tol
    )


def test_strided_inputs_are_read_correctly(rng):
    """A transposed view reaches the operator with its strides; the kernels must not read it as dense."""
    x = paddle.to_tensor(rng.normal(size=(67, 6)).astype("float32")).transpose([1, 0])
    w = paddle.to_tensor(rng.normal(size=67).astype("float32"))
    np.testing.assert_allclose(
        llama_ops.fused.rms_norm(x, w).numpy(),
        llama_ops.fallback.rms_norm(x, w).numpy(),
        rtol=2e-5,
        atol=2e-5,
    )


def test_only_one_input_needs_grad(rng):
    """Frozen weight: the backward still runs and x's gradient is unchanged."""
    x = rng.normal(size=(4, 33))
    w = rng.normal(size=33)
    grads = []
    for impl in (llama_ops.fused, llama_ops.fallback):
        xt, wt = _t(x, "float64"), _t(w, "float64", grad=False)
        (gx,) = paddle.grad([impl.rms_norm(xt, wt).sum()], [xt])
        grads.append(gx.numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12, atol=1e-12)

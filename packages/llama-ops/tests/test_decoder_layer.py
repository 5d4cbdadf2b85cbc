"""The inference kernels fused_decoder_layer and fused_norm_head against a float64 numpy decoder layer
written from the formulas (numpy_reference's norm, rotary and SwiGLU; attention over the cache
spelled out): a prefill of left-padded prompts, then steps over the cache (the output and both
caches checked at each), grouped-query and multi-head, through each GEMM backend this Paddle offers:
MKL's where its wheel ships it, and Paddle's matmul (LLAMA_OPS_BLAS=paddle) everywhere. The backend
is chosen once per process, so the one this process does not run is tested in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from conftest import FALLBACK_REQUESTED
from numpy_reference import rms_norm, rope, swiglu

from llama_ops import fused
from llama_ops._library import gemm_backend

pytestmark = pytest.mark.skipif(FALLBACK_REQUESTED, reason="LLAMA_OPS_DISABLE is set")

MIN = float(np.finfo(np.float32).min)
# Measured floor: float32 kernels against the float64 reference over these shapes, largest
# |difference| 4.8e-7 of the largest |value| (prefill and 4 steps; the same through Paddle's matmul). The
# bound fails (tried) for a scale of 1/d instead of 1/sqrt(d), and for a mask read one slot off.
RTOL = 3e-6

# The GEMM this process's kernels must use: MKL's where Paddle's wheel ships its MKL (x86 wheels:
# libmklml_intel.so beside Paddle's libraries), unless LLAMA_OPS_BLAS=paddle; Paddle's matmul
# otherwise. OTHER: the backend left to test in a subprocess (None where there is no MKL).
MKL_SHIPPED = (Path(paddle.__file__).parent / "libs" / "libmklml_intel.so").exists()
BACKEND = "mkl" if MKL_SHIPPED and os.environ.get("LLAMA_OPS_BLAS") != "paddle" else "paddle"
OTHER = "paddle" if BACKEND == "mkl" else ("mkl" if MKL_SHIPPED else None)


def reference_layer(x, w, cos, sin, positions, mask_of, keys, values, start, s, heads):
    """One layer in float64: returns (out, keys, values), the caches written at start..start+s.
    ``mask_of(r, kv_head, member, i, j)``: the additive mask of query i, slot j."""
    nq, nk, d = heads
    g, b = nq // nk, keys.shape[0]
    h = rms_norm(x, w["attn_norm"], 1e-6)
    qkv = h @ w["qkv"]
    q = qkv[:, : nq * d].reshape(b, s, nq, d)
    k = qkv[:, nq * d : (nq + nk) * d].reshape(b, s, nk, d)
    v = qkv[:, (nq + nk) * d :].reshape(b, s, nk, d)
    c, sn = cos[positions].reshape(b, s, d), sin[positions].reshape(b, s, d)
    q, k = rope(q, c, sn), rope(k, c, sn)
    keys, values = keys.copy(), values.copy()
    keys[:, :, start : start + s] = k.transpose(0, 2, 1, 3)
    values[:, :, start : start + s] = v.transpose(0, 2, 1, 3)
    attn = np.zeros((b, s, nq, d))
    for r in range(b):
        for hk in range(nk):
            for m in range(g):
                for i in range(s):
                    seen = start + i + 1
                    scores = keys[r, hk, :seen] @ q[r, i, hk * g + m] / np.sqrt(d)
                    scores = scores + np.array([mask_of(r, hk, m, i, j) for j in range(seen)])
                    p = np.exp(scores - scores.max())
                    attn[r, i, hk * g + m] = (p / p.sum()) @ values[r, hk, :seen]
    x = x + attn.reshape(b * s, nq * d) @ w["o"]
    h = rms_norm(x, w["mlp_norm"], 1e-6)
    gu = h @ w["gate_up"]
    inter = gu.shape[1] // 2
    return x + swiglu(gu[:, :inter], gu[:, inter:]) @ w["down"], keys, values


def weights(rng, hidden, nq, nk, d, inter):
    def m(*shape):
        return rng.normal(0, 0.2, shape)

    return {
        "attn_norm": 1 + m(hidden),
        "qkv": m(hidden, (nq + 2 * nk) * d),
        "o": m(nq * d, hidden),
        "mlp_norm": 1 + m(hidden),
        "gate_up": m(hidden, 2 * inter),
        "down": m(inter, hidden),
    }


def run_kernel(x, w, cos, sin, positions, mask, start, keys, values, heads):
    t = {k: paddle.to_tensor(v, dtype="float32") for k, v in w.items()}
    kc = paddle.to_tensor(keys, dtype="float32")
    vc = paddle.to_tensor(values, dtype="float32")
    out, k_out, _ = fused.decoder_layer(
        paddle.to_tensor(x, dtype="float32"), t["attn_norm"], t["qkv"], t["o"], t["mlp_norm"],
        t["gate_up"], t["down"], paddle.to_tensor(cos, dtype="float32"),
        paddle.to_tensor(sin, dtype="float32"), paddle.to_tensor(positions, dtype="int64"),
        paddle.to_tensor(mask, dtype="float32"), paddle.to_tensor([start], dtype="int64"), kc, vc,
        eps=1e-6, num_heads=heads[0], num_kv_heads=heads[1],
    )  # fmt: skip
    # the caches are written in place: the returned ones are the ones given
    np.testing.assert_array_equal(k_out.numpy(), kc.numpy())
    return out.numpy(), kc.numpy(), vc.numpy()


def close(got, want):
    np.testing.assert_allclose(got, want, rtol=0, atol=RTOL * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("heads", [(4, 2, 8), (4, 4, 6)], ids=["gqa", "mha"])
def test_prefill_then_steps_match_the_reference(heads):
    nq, nk, d = heads
    g, hidden, inter, b, p, capacity = nq // nk, 48, 40, 3, 5, 9
    rng = np.random.default_rng(7)
    w = weights(rng, hidden, nq, nk, d, inter)
    angles = np.arange(16)[:, None] * (0.3 / (1 + np.arange(d // 2)))[None, :]
    cos = np.cos(np.concatenate([angles, angles], 1))
    sin = np.sin(np.concatenate([angles, angles], 1))
    pads = np.array([0, 2, 4])
    slots = np.arange(capacity)
    real = slots[None, :] >= pads[:, None]
    keys = np.zeros((b, nk, capacity, d))
    values = np.zeros((b, nk, capacity, d))

    # The prefill: left-padded prompts, mask [b, 1, 1, p, p] (padding and the future hidden).
    allowed = real[:, None, :p] & (slots[None, :p, None] >= slots[None, None, :p])
    mask = np.where(allowed, 0.0, MIN)[:, None, None]
    positions = np.maximum(slots[None, :p] - pads[:, None], 0).reshape(-1)
    x = rng.normal(size=(b * p, hidden))
    got, got_k, got_v = run_kernel(x, w, cos, sin, positions, mask, 0, keys, values, heads)
    want, keys, values = reference_layer(
        x, w, cos, sin, positions, lambda r, h, m, i, j: mask[r, 0, 0, i, j], keys, values, 0, p,
        heads,
    )  # fmt: skip
    rows = real[:, :p].reshape(-1)  # a padding query sees nothing: its output is not compared
    close(got[rows], want[rows])
    close(got_k, keys)
    close(got_v, values)

    # Steps: one token per row at slot t, mask [b, kv_heads, group, capacity] over written slots.
    for t in range(p, capacity):
        seen = real & (slots[None, :] <= t)
        step_mask = np.broadcast_to(np.where(seen, 0.0, MIN)[:, None, None], (b, nk, g, capacity))
        positions = t - pads
        x = rng.normal(size=(b, hidden))
        got, got_k, got_v = run_kernel(
            x, w, cos, sin, positions, np.ascontiguousarray(step_mask), t, keys, values, heads
        )
        want, keys, values = reference_layer(
            x, w, cos, sin, positions, lambda r, h, m, i, j, mask=step_mask: mask[r, h, m, j],
            keys, values, t, 1, heads,
        )  # fmt: skip
        close(got, want)
        close(got_k, keys)
        close(got_v, values)
    assert gemm_backend() == BACKEND


@pytest.mark.parametrize("tied", [False, True], ids=["head", "tied-embedding"])
def test_norm_head_matches_the_reference(tied):
    rng = np.random.default_rng(3)
    x, norm = rng.normal(size=(3, 48)), 1 + rng.normal(0, 0.2, 48)
    weight = rng.normal(size=(100, 48) if tied else (48, 100))
    want = rms_norm(x, norm, 1e-6) @ (weight.T if tied else weight)
    got = fused.norm_head(
        paddle.to_tensor(x, dtype="float32"), paddle.to_tensor(norm, dtype="float32"),
        paddle.to_tensor(weight, dtype="float32"), eps=1e-6, transposed_weight=tied,
    )  # fmt: skip
    assert got.dtype == paddle.float32 and list(got.shape) == [3, 100]
    close(got.numpy(), want)
    assert gemm_backend() == BACKEND


def test_a_cache_overrun_is_refused():
    nq, nk, d, hidden = 4, 2, 8, 48
    w = {k: paddle.to_tensor(v, dtype="float32") for k, v in weights(
        np.random.default_rng(0), hidden, nq, nk, d, 40).items()}  # fmt: skip
    cache = paddle.zeros([1, nk, 4, d])
    with pytest.raises(Exception, match="exceed the capacity"):
        fused.decoder_layer(
            paddle.zeros([1, hidden]), w["attn_norm"], w["qkv"], w["o"], w["mlp_norm"],
            w["gate_up"], w["down"], paddle.ones([8, d]), paddle.zeros([8, d]),
            paddle.to_tensor([0], dtype="int64"), paddle.zeros([1, nk, nq // nk, 4]),
            paddle.to_tensor([4], dtype="int64"), cache, paddle.zeros([1, nk, 4, d]),
            eps=1e-6, num_heads=nq, num_kv_heads=nk,
        )  # fmt: skip


@pytest.mark.skipif(OTHER is None, reason="this Paddle ships no MKL: Paddle's matmul only (above)")
def test_the_other_gemm_backend_gives_the_same_numbers():
    """The same tests and bound through the backend this process does not use: Paddle's matmul (the
    path of builds without MKL) when this process runs MKL's, MKL's when LLAMA_OPS_BLAS=paddle."""
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_OPS_BLAS"}
    if OTHER == "paddle":
        env["LLAMA_OPS_BLAS"] = "paddle"
    here = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
         "prefill_then_steps or norm_head", os.path.join(here, "test_decoder_layer.py")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    assert "4 passed" in done.stdout


# A fresh process whose first Paddle matrix product is the kernels' own: Paddle has not loaded its
# MKL when they first need a GEMM. That first call already runs on MKL (resolved once, after making
# Paddle load it); the lookup used to fail there, take Paddle's matmul, and give up after two calls.
_FIRST_CALL = """
import numpy as np, paddle
from llama_ops import fused
from llama_ops._library import gemm_backend
x, norm, w = (paddle.to_tensor(np.ones(s, "float32")) for s in ((2, 8), (8,), (8, 4)))
fused.norm_head(x, norm, w, eps=1e-6, transposed_weight=False)
print(gemm_backend())
"""


@pytest.mark.skipif(BACKEND != "mkl", reason="MKL is not this process's backend here")
def test_kernels_called_before_paddles_first_matmul_still_use_mkl():
    done = subprocess.run(
        [sys.executable, "-c", _FIRST_CALL], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "mkl"

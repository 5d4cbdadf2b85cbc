"""The CUDA kernels through Paddle (the installed operators, not the shim of tests/cuda) against
the fallback, forward and backward, in float32, bfloat16 and float16 on one GPU (``pytest -m gpu``
/ ``nox -s tests_gpu``; deselected otherwise). Fails in one line without a CUDA build of Paddle, a
GPU, or a library built with CUDA kernels.

Reference: the fallback in float32 on the same (rounded) inputs, so the comparison sees the
kernels' error only. Bounds (relative, and absolute relative to the largest output): float32 2e-5
(the CPU suite's bound; tests/cuda measured 1e-7 errors on an H200); bfloat16 2e-2 and float16
4e-3, about 4 units of the half type's last place (tests/cuda measured 2e-3..3e-3 for bfloat16
against float64). The float32 bound fails on CPU when the kernels' rms_norm weight gradient is
halved (tried on CPU with the test run on the CPU kernels), and the counters prove the fused
kernels ran.
"""

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

# relative bound; the absolute part is this times the output's largest magnitude (a weight gradient
# sums 512 rows: float32 summation order alone moves it by 4e-5 on values of 30, measured with the
# CPU kernels through this test)
TOL = {"float32": 2e-5, "bfloat16": 2e-2, "float16": 4e-3}


def _gpu():
    import paddle

    import llama_ops

    if not paddle.is_compiled_with_cuda():
        pytest.fail(
            "GPU tests need a CUDA build of Paddle (paddlepaddle-gpu); this Paddle is CPU-only",
            pytrace=False,
        )
    if paddle.device.cuda.device_count() < 1:
        pytest.fail("this GPU test needs 1 GPU; none visible", pytrace=False)
    if "cuda" not in llama_ops.backend():
        pytest.fail(
            f"llama-ops has no CUDA kernels here ({llama_ops.backend()}): rebuild it against "
            "paddlepaddle-gpu with nvcc on PATH (pip install --no-build-isolation llama-ops)",
            pytrace=False,
        )
    paddle.set_device("gpu:0")
    return paddle


CASES = {
    # name: (call, input shapes, indices of inputs that get gradients)
    "rms_norm": (lambda m, x, w: m.rms_norm(x, w, 1e-6), [(512, 4099), (4099,)], (0, 1)),
    "apply_rope": (
        lambda m, q, k, c, s: m.apply_rope(q, k, c, s),
        [(2, 64, 8, 128), (2, 64, 2, 128), (64, 128), (64, 128)],
        (0, 1),
    ),
    "swiglu": (lambda m, g, u: m.swiglu(g, u), [(300, 1001), (300, 1001)], (0, 1)),
    "swiglu_packed": (lambda m, gu: m.swiglu(gu), [(300, 2002)], (0,)),
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_kernel_matches_fallback(case, dtype):
    import llama_ops

    paddle = _gpu()
    call, shapes, grad_of = CASES[case]
    rng = np.random.default_rng(7)
    arrays = [rng.normal(size=shape) for shape in shapes]

    def run(module, cast):
        tensors = []
        for i, a in enumerate(arrays):
            t = paddle.to_tensor(a.astype("float32")).astype(dtype).astype(cast)
            t.stop_gradient = i not in grad_of
            tensors.append(t)
        outs = call(module, *tensors)
        outs = list(outs) if isinstance(outs, tuple) else [outs]
        # a fixed probe per output, so the backward sees a non-uniform upstream gradient
        loss = sum((o.astype("float32") * (1 + 0.01 * j)).sum() for j, o in enumerate(outs))
        grads = paddle.grad([loss], [tensors[i] for i in grad_of])
        return [t.astype("float32").numpy() for t in outs + list(grads)]

    llama_ops.reset_usage()
    got = run(llama_ops, dtype)
    op = "swiglu" if case.startswith("swiglu") else case
    assert llama_ops.usage()[op] == {"fused": 1, "local": 0, "fallback": 0}, llama_ops.usage()
    want = run(llama_ops.fallback, "float32")
    for g, w in zip(got, want):
        w = paddle.to_tensor(w).astype(dtype).astype("float32").numpy()  # the half type's rounding
        tol = TOL[dtype]
        atol = tol * max(1.0, float(np.abs(w).max()))
        np.testing.assert_allclose(g, w, rtol=tol, atol=atol, err_msg=f"{case} {dtype}")

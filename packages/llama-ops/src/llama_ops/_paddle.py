"""The one place that imports paddle, so a missing install fails with one readable line.

Importing llama-ops changes nothing process-wide. Its kernels run on GCC's OpenMP runtime (libgomp,
loaded with paddle) while Paddle's matmuls run on Intel's (libiomp5), and libgomp's threads spinning
after each kernel hold the cores the next matmul needs: set ``GOMP_SPINCOUNT=0`` before paddle is
imported, or call llama-model's ``configure_runtime()``, which does it when llama-ops is installed
(llama-train and llama-infer call it).
"""

try:
    import paddle
except ImportError as exc:  # pragma: no cover - exercised only without paddle
    raise ImportError(
        "llama-ops needs PaddlePaddle: `pip install llama-ops[cpu]` (CPU) or "
        "`pip install paddlepaddle-gpu==3.3.1 -i https://www.paddlepaddle.org.cn/packages/stable/cu126/` (GPU)"
    ) from exc

__all__ = ["paddle"]

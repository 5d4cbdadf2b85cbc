"""The one place that imports paddle, so a missing install fails with one readable line.

Importing it changes nothing process-wide: the command line calls llama-model's
``configure_runtime()`` before Paddle loads (MKL's code path on AMD CPUs, libgomp's spinning with
llama-ops, malloc's reuse of freed memory); a library user calls it when they want those settings.
"""

try:
    import paddle
except ImportError as exc:  # pragma: no cover - exercised only without paddle
    raise ImportError(
        "llama-infer needs PaddlePaddle: `pip install llama-infer[cpu]` (CPU, package paddlepaddle) or "
        "`pip install paddlepaddle-gpu==3.3.1 -i https://www.paddlepaddle.org.cn/packages/stable/cu126/` (GPU)"
    ) from exc

__all__ = ["paddle"]

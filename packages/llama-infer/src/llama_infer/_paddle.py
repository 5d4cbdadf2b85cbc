"""The one place that imports paddle, so a missing install fails with one readable line."""

try:
    import paddle
except ImportError as exc:  # pragma: no cover - exercised only without paddle
    raise ImportError(
        "llama-infer needs PaddlePaddle: `pip install llama-infer[cpu]` (CPU, package paddlepaddle) or "
        "`pip install paddlepaddle-gpu==3.3.1 -i https://www.paddlepaddle.org.cn/packages/stable/cu126/` (GPU)"
    ) from exc

__all__ = ["paddle"]

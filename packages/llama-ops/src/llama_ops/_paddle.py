"""The one place that imports paddle, so a missing install fails with one readable line.

Just before, ``_runtime.before_paddle_import()``: when this import is what loads Paddle, the runtime
settings are applied first (llama-model's ``configure_runtime()`` when llama-model is installed; alone,
the two variables the kernels need: ``MKL_DEBUG_CPU_TYPE=5`` on AMD CPUs, ``GOMP_SPINCOUNT=0``, see
``_runtime``); when the application loaded Paddle already, nothing is applied and one warning says
what is lost where it matters. Importing llama-ops changes nothing else process-wide.
"""

from llama_ops._runtime import before_paddle_import

before_paddle_import()
try:
    import paddle
except ImportError as exc:  # pragma: no cover - exercised only without paddle
    raise ImportError(
        "llama-ops needs PaddlePaddle: `pip install llama-ops[cpu]` (CPU) or "
        "`pip install paddlepaddle-gpu==3.3.1 -i https://www.paddlepaddle.org.cn/packages/stable/cu126/` (GPU)"
    ) from exc

__all__ = ["paddle"]

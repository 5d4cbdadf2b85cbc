"""The one place that imports paddle, so a missing install fails with one readable line.

When this import is what loads Paddle, llama-model's ``configure_runtime()`` settings are applied
just before (MKL's code path on AMD CPUs, libgomp's spinning with llama-ops, malloc's reuse of freed
memory: ``llama_model.runtime.before_paddle_import``), so generation is as fast whether or not the
application called it first; when the application loaded Paddle already, nothing is applied and one
warning says what that costs where it matters. The command line calls ``configure_runtime(
pin_threads=True)`` before anything loads Paddle (it also pins MKL's threads: a process that owns
its cores); an import never pins. Without llama-model (an export directory is served without it)
nothing is applied here.
"""

try:
    from llama_model.runtime import before_paddle_import
except ImportError:  # serving an export directory needs only paddle and llama-infer
    pass
else:
    before_paddle_import("llama_infer")

try:
    import paddle
except ImportError as exc:  # pragma: no cover - exercised only without paddle
    raise ImportError(
        "llama-infer needs PaddlePaddle: `pip install llama-infer[cpu]` (CPU, package paddlepaddle) or "
        "`pip install paddlepaddle-gpu==3.3.1 -i https://www.paddlepaddle.org.cn/packages/stable/cu126/` (GPU)"
    ) from exc

__all__ = ["paddle"]

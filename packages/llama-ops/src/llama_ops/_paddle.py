"""The one place that imports paddle, so a missing install fails with one readable line.

When llama-ops is imported before paddle, it sets ``GOMP_SPINCOUNT=0`` (unless the user set it) first:
its kernels run on GCC's OpenMP runtime (libgomp, loaded with paddle) while Paddle's matmuls run on
Intel's (libiomp5), and libgomp's threads spinning after each kernel hold the cores the next matmul
needs. llama-model and llama-infer do the same when they import paddle first.
"""

import os
import sys

if "paddle" not in sys.modules and os.environ.get("LLAMA_OPS_DISABLE", "") in ("", "0"):
    os.environ.setdefault("GOMP_SPINCOUNT", "0")

try:
    import paddle
except ImportError as exc:  # pragma: no cover - exercised only without paddle
    raise ImportError(
        "llama-ops needs PaddlePaddle: `pip install llama-ops[cpu]` (CPU) or "
        "`pip install paddlepaddle-gpu==3.3.1 -i https://www.paddlepaddle.org.cn/packages/stable/cu126/` (GPU)"
    ) from exc

__all__ = ["paddle"]

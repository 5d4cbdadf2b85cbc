"""The one place that imports paddle, so a missing install fails with one readable line.

Like llama-model's, it sets ``MKL_DEBUG_CPU_TYPE=5`` before Paddle loads its math library, when it
safely can: Paddle's CPU wheel links an old Intel MKL that, on AMD processors, runs matrix
multiplies on a generic path 2-3x slower than its AVX2 one. The static predictor runs without
llama-model, so this package cannot rely on llama-model having done it. Only on an AMD CPU with
AVX2, only if the user has not set it, and only if paddle is not imported yet.
"""

import os
import sys


def _amd_cpu_with_avx2() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            head = fh.read(8192)
    except OSError:
        return False
    return "AuthenticAMD" in head and " avx2" in head


if "paddle" not in sys.modules and "MKL_DEBUG_CPU_TYPE" not in os.environ and _amd_cpu_with_avx2():
    os.environ["MKL_DEBUG_CPU_TYPE"] = "5"

try:
    import paddle
except ImportError as exc:  # pragma: no cover - exercised only without paddle
    raise ImportError(
        "llama-infer needs PaddlePaddle: `pip install llama-infer[cpu]` (CPU, package paddlepaddle) or "
        "`pip install paddlepaddle-gpu==3.3.1 -i https://www.paddlepaddle.org.cn/packages/stable/cu126/` (GPU)"
    ) from exc

__all__ = ["paddle"]

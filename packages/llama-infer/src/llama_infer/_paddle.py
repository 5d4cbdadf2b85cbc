"""The one place that imports paddle, so a missing install fails with one readable line.

Like llama-model's, it sets ``GOMP_SPINCOUNT=0`` when llama-ops' kernels will be used, and
``MKL_DEBUG_CPU_TYPE=5`` before Paddle loads its math library, when it safely can: Paddle's CPU wheel links an old Intel MKL that, on AMD processors, runs matrix
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


def _fused_kernels_coming() -> bool:
    """Whether llama-ops is installed and not switched off, without importing it (dygraph decoding
    uses its kernels through llama-model)."""
    import importlib.util

    off = ("LLAMA_OPS_DISABLE", "LLAMA_MODEL_NO_OPS")
    if any(os.environ.get(v, "") not in ("", "0") for v in off):
        return False
    try:
        return importlib.util.find_spec("llama_ops") is not None
    except (ImportError, ValueError):  # a broken install, or an import hook that refuses it
        return False


# As llama-model does (see its _paddle.py): llama-ops' libgomp threads must not spin between its
# kernels and Paddle's matmuls. Prefill of config T at batch 8: 152 ms with the default spin count,
# 68 ms with 0 (2 cores).
if "paddle" not in sys.modules and "GOMP_SPINCOUNT" not in os.environ and _fused_kernels_coming():
    os.environ["GOMP_SPINCOUNT"] = "0"

try:
    import paddle
except ImportError as exc:  # pragma: no cover - exercised only without paddle
    raise ImportError(
        "llama-infer needs PaddlePaddle: `pip install llama-infer[cpu]` (CPU, package paddlepaddle) or "
        "`pip install paddlepaddle-gpu==3.3.1 -i https://www.paddlepaddle.org.cn/packages/stable/cu126/` (GPU)"
    ) from exc

__all__ = ["paddle"]

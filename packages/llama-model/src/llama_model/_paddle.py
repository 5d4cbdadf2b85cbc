"""The one place that imports paddle, so a missing install fails with one readable line.

It also sets environment variables before Paddle loads its math libraries, when it safely can.
``GOMP_SPINCOUNT=0`` when llama-ops' kernels will be used (see below), and ``MKL_DEBUG_CPU_TYPE``:
Paddle's CPU wheel links an old Intel MKL (libmklml) that, on AMD processors, dispatches matrix
multiplies to a generic SSE code path, 2-3x slower than its AVX2 one. ``MKL_DEBUG_CPU_TYPE=5`` makes
that MKL use the AVX2 path (newer MKLs ignore the variable). It is set only on an AMD CPU with AVX2,
only if the user has not set it, and only if paddle is not imported yet (MKL reads it when loaded).
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
    """Whether llama-ops (OpenMP kernels) is installed and not switched off, without importing it."""
    import importlib.util

    off = ("LLAMA_OPS_DISABLE", "LLAMA_MODEL_NO_OPS")
    if any(os.environ.get(v, "") not in ("", "0") for v in off):
        return False
    try:
        return importlib.util.find_spec("llama_ops") is not None
    except (ImportError, ValueError):  # a broken install, or an import hook that refuses it
        return False


# llama-ops' kernels run on GCC's OpenMP runtime (libgomp, which Paddle loads), Paddle's matmuls on
# Intel's (libiomp5). libgomp's threads spin for a while after each parallel region and hold the
# cores the next matmul needs: with the default spin count, llama-model's config-T training step
# with llama-ops took 1.77 s, with GOMP_SPINCOUNT=0 1.48 s (2 cores); without llama-ops it makes no
# difference. libgomp reads it once, when loaded with paddle.
if "paddle" not in sys.modules and "GOMP_SPINCOUNT" not in os.environ and _fused_kernels_coming():
    os.environ["GOMP_SPINCOUNT"] = "0"

try:
    import paddle
except ImportError as exc:  # exercised by tests/test_import.py
    raise ImportError(
        "llama-model needs PaddlePaddle: `pip install llama-model[cpu]` (CPU) or "
        "`pip install paddlepaddle-gpu==3.3.1 -i https://www.paddlepaddle.org.cn/packages/stable/cu126/` (GPU)"
    ) from exc

__all__ = ["paddle"]

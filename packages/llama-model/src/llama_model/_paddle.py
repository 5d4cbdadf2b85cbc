"""The one place that imports paddle, so a missing install fails with one readable line.

It also sets environment variables before Paddle loads its math libraries, when it safely can, and on
CPU builds keeps freed memory in the heap and offers ``no_strided_views`` (see the end).
``GOMP_SPINCOUNT=0`` when llama-ops' kernels will be used (see below), and ``MKL_DEBUG_CPU_TYPE``:
Paddle's CPU wheel links an old Intel MKL (libmklml) that, on AMD processors, dispatches matrix
multiplies to a generic SSE code path, 2-3x slower than its AVX2 one. ``MKL_DEBUG_CPU_TYPE=5`` makes
that MKL use the AVX2 path (newer MKLs ignore the variable). It is set only on an AMD CPU with AVX2,
only if the user has not set it, and only if paddle is not imported yet (MKL reads it when loaded).
"""

import contextlib
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


def _keep_freed_memory() -> bool:
    """Make glibc's malloc serve every block from its heap and never hand freed memory back.

    By default glibc maps each block above ~128 KB-32 MB freshly from the kernel and unmaps it on
    free, so every large tensor Paddle allocates (activations, gradients, logits: megabytes each, a
    fresh one per op) starts on untouched pages and pays a page fault per 4 KB. On this 2-core VM
    that made a memory-bound op 4x slower (x * 1.0 on 16.8 MB: 14.5 ms, 3.3 ms from reused memory)
    and config T's training step took 1.05-1.11 s instead of 0.84 s. The cost: the process keeps
    its peak memory until it exits, as a training job does anyway. Skipped when the user tunes the
    allocator (any MALLOC_* variable, an LD_PRELOADed malloc) or sets LLAMA_MODEL_MALLOC_TUNING=0.
    """
    if os.environ.get("LLAMA_MODEL_MALLOC_TUNING", "1") == "0":
        return False
    if any(k.startswith("MALLOC_") for k in os.environ) or "malloc" in os.environ.get(
        "LD_PRELOAD", ""
    ):
        return False
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's C library
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


# On CPU, Paddle 3.3.1's transpose (and slice) return strided views, and the next op that needs the
# data contiguous (a reshape, a custom kernel) copies it element by element on one thread: in
# config T's training step those copies took more time than all the attention's softmaxes. With
# stride kernels off, transpose writes a contiguous result with its multi-threaded kernel: the step
# went from 1.33 s to 1.05 s (2 cores). Only around the model's own compute (``no_strided_views``):
# Paddle's checkpoint code writes through views, and with the flag off process-wide
# dist.load_merged_state_dict returned garbage for replicated tensors. GPU builds keep the views
# (their strided copies are fast); a user's own FLAGS_use_stride_kernel wins.
_STRIDE_FLAG = "FLAGS_use_stride_kernel"
_DROP_STRIDED_VIEWS = _STRIDE_FLAG not in os.environ and not paddle.is_compiled_with_cuda()


@contextlib.contextmanager
def no_strided_views():
    """Within the block, ops write contiguous results instead of strided views (CPU builds)."""
    if not _DROP_STRIDED_VIEWS:
        yield
        return
    before = paddle.get_flags([_STRIDE_FLAG])
    paddle.set_flags({_STRIDE_FLAG: False})
    try:
        yield
    finally:
        paddle.set_flags(before)


MALLOC_TUNED = False if paddle.is_compiled_with_cuda() else _keep_freed_memory()

__all__ = ["no_strided_views", "paddle"]

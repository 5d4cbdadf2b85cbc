"""``configure_runtime()``: the process-wide settings that make Paddle fast on a CPU, applied only when
an application asks (importing a package never changes the environment or the allocator).

Four settings, each measured on the 2-core development VM:

* ``MKL_DEBUG_CPU_TYPE=5``, on an AMD CPU with AVX2 only: Paddle's CPU wheel links an old Intel MKL
  (libmklml) that, on AMD processors, runs matrix multiplies on a generic SSE path 2-3x slower than
  its AVX2 one; this variable makes it use AVX2 (newer MKLs ignore it). MKL reads it when Paddle
  loads it, so it is set only before ``import paddle``.
* ``GOMP_SPINCOUNT=0`` when llama-ops' kernels will run: they use GCC's OpenMP runtime (libgomp)
  and Paddle's matmuls Intel's (libiomp5); libgomp's threads spin after each kernel and hold the
  cores the next matmul needs (config T's step with llama-ops: 1.77 s spinning, 1.48 s with 0).
  Also read once, when Paddle loads libgomp.
* glibc's malloc keeps freed memory in its heap (``mallopt``: no ``mmap`` for big blocks, no
  trimming). By default every large tensor starts on fresh pages and pays a fault per 4 KB: a
  memory-bound op ran 4x slower (x * 1.0 on 16.8 MB: 14.5 ms, 3.3 ms from reused memory) and config
  T's step took 1.05-1.11 s instead of 0.84 s. The cost: the process keeps its peak memory until it
  exits, as a training job does anyway. CPU builds only; any time before the big allocations.

* ``KMP_AFFINITY=granularity=fine,compact,1,0``, asked for with ``pin_threads=True`` (llama-infer,
  a process that owns its cores): Intel's OpenMP, which runs Paddle's MKL, pins one thread per
  physical core. Unpinned, config T's exported decode step alternated between 0.70 and 1.0 ms from
  run to run as the scheduler moved the threads; pinned, 0.70 ms every run. Never for training:
  the ranks of a job share a machine, and each would pin its threads to the same first cores.
  Intel's OpenMP keeps its threads inside the process's affinity mask (``taskset``), so processes
  given their own cores stay apart. Also read when Paddle loads its OpenMP.

A user's own setting always stands: a variable already set is left alone, and the allocator is not
touched when ``MALLOC_*`` is set, a malloc is ``LD_PRELOAD``ed, or ``LLAMA_MODEL_MALLOC_TUNING=0``.
The llama-train worker, the llama-infer and llama-train commands and the benchmarks call it first
thing; a library user calls it before importing paddle. Idempotent: a second call changes nothing.
This module imports nothing heavy (no paddle).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field

MALLOC_TUNING_ENV = "LLAMA_MODEL_MALLOC_TUNING"


@dataclass
class RuntimeReport:
    """What ``configure_runtime`` did: settings it applied, and ones it could not apply because
    Paddle was already loaded (reasons in words)."""

    applied: list[str] = field(default_factory=list)
    too_late: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [", ".join(self.applied) or "nothing to change"]
        if self.too_late:
            parts.append("not applied (paddle was imported first): " + ", ".join(self.too_late))
        return "; ".join(parts)


_MALLOC_DONE = False


def configure_runtime(pin_threads: bool = False) -> RuntimeReport:
    """Apply the settings above that this machine and environment call for; see the module doc.
    ``pin_threads``: pin Paddle's math threads to cores (a process that owns the machine's cores)."""
    global _MALLOC_DONE
    report = RuntimeReport()
    loaded = "paddle" in sys.modules
    wanted = {}
    if "MKL_DEBUG_CPU_TYPE" not in os.environ and _amd_cpu_with_avx2():
        wanted["MKL_DEBUG_CPU_TYPE"] = "5"
    if "GOMP_SPINCOUNT" not in os.environ and fused_kernels_coming():
        wanted["GOMP_SPINCOUNT"] = "0"
    if pin_threads and "KMP_AFFINITY" not in os.environ and not _cuda_build():
        wanted["KMP_AFFINITY"] = "granularity=fine,compact,1,0"
    for name, value in wanted.items():
        if loaded:
            report.too_late.append(f"{name}={value}")
        else:
            os.environ[name] = value
            report.applied.append(f"{name}={value}")
    if not _MALLOC_DONE and _malloc_tuning_wanted() and _keep_freed_memory():
        _MALLOC_DONE = True
        report.applied.append("malloc keeps freed memory")
    return report


def malloc_tuned() -> bool:
    """Whether ``configure_runtime`` tuned the allocator in this process."""
    return _MALLOC_DONE


def fused_kernels_coming() -> bool:
    """Whether llama-ops is installed and not switched off, without importing it."""
    off = ("LLAMA_OPS_DISABLE", "LLAMA_MODEL_NO_OPS")
    if any(os.environ.get(v, "") not in ("", "0") for v in off):
        return False
    try:
        return importlib.util.find_spec("llama_ops") is not None
    except (ImportError, ValueError):  # a broken install, or an import hook that refuses it
        return False


def _amd_cpu_with_avx2() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            head = fh.read(8192)
    except OSError:
        return False
    return "AuthenticAMD" in head and " avx2" in head


def _malloc_tuning_wanted() -> bool:
    if os.environ.get(MALLOC_TUNING_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if any(k.startswith("MALLOC_") for k in os.environ):
        return False
    if "malloc" in os.environ.get("LD_PRELOAD", ""):
        return False
    return not _cuda_build()


def _cuda_build() -> bool:
    """A GPU build of Paddle (its allocator, not malloc, holds the big tensors): told without
    importing paddle when it is not loaded yet, from the installed distribution's name."""
    if "paddle" in sys.modules:
        return bool(sys.modules["paddle"].is_compiled_with_cuda())
    from importlib import metadata

    try:
        metadata.version("paddlepaddle-gpu")
    except metadata.PackageNotFoundError:
        return False
    return True


def _keep_freed_memory() -> bool:
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's C library
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))

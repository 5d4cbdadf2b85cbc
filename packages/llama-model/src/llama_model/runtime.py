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
Idempotent: a second call changes nothing. A variable comes too late once the library that reads it
is loaded: libgomp and Intel's OpenMP load with ``import paddle``, but Paddle loads its MKL only at
its first matrix product, so ``MKL_DEBUG_CPU_TYPE`` still takes effect after ``import paddle`` up to
then. The report says what came too late.

Who calls it. The llama-train worker, the llama-infer and llama-train commands and the benchmarks
call it first thing. And ``before_paddle_import`` below: llama-model, llama-infer and (when
llama-model is installed) llama-ops call it just before their own ``import paddle``, so a process
where one of them is what loads Paddle gets exactly ``configure_runtime()``'s settings, whatever
the order of the imports (``from llama_model import ParallelModel`` first included). Importing
the packages changes nothing else, and nothing at all when Paddle is already loaded: then the
settings are the application's, and one ``RuntimeWarning`` says what is lost where it matters
(an AMD CPU with Paddle's old MKL, llama-ops' libgomp beside MKL's OpenMP), by how much, and how
to fix it. The allocator setting does not depend on the order: ``configure_runtime()`` applies it
whenever it is called.

This module imports nothing heavy (no paddle).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
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
            parts.append(
                "not applied (the library that reads it was already loaded): "
                + ", ".join(self.too_late)
            )
        return "; ".join(parts)


_MALLOC_DONE = False

# The library that reads each variable, once, when it loads (its soname): set after that, a variable
# changes nothing. libgomp and libiomp5 load with ``import paddle`` (libgomp earlier if another
# library brought it: torch does); Paddle's MKL at its first matrix product.
READ_BY = {
    "MKL_DEBUG_CPU_TYPE": "libmklml_intel.so",
    "GOMP_SPINCOUNT": "libgomp.so.1",
    "KMP_AFFINITY": "libiomp5.so",
}


def configure_runtime(pin_threads: bool = False) -> RuntimeReport:
    """Apply the settings above that this machine and environment call for; see the module doc.
    ``pin_threads``: pin Paddle's math threads to cores (a process that owns the machine's cores)."""
    global _MALLOC_DONE
    report = RuntimeReport()
    for name, value in _wanted(pin_threads).items():
        if library_loaded(READ_BY[name]):
            report.too_late.append(f"{name}={value}")
        else:
            os.environ[name] = value
            report.applied.append(f"{name}={value}")
    if not _MALLOC_DONE and _malloc_tuning_wanted() and _keep_freed_memory():
        _MALLOC_DONE = True
        report.applied.append("malloc keeps freed memory")
    return report


def _wanted(pin_threads: bool) -> dict[str, str]:
    """The variables this machine and environment call for, the user's own left out."""
    wanted = {}
    if "MKL_DEBUG_CPU_TYPE" not in os.environ and _amd_cpu_with_avx2():
        wanted["MKL_DEBUG_CPU_TYPE"] = "5"
    if "GOMP_SPINCOUNT" not in os.environ and fused_kernels_coming():
        wanted["GOMP_SPINCOUNT"] = "0"
    if pin_threads and "KMP_AFFINITY" not in os.environ and not _cuda_build():
        wanted["KMP_AFFINITY"] = "granularity=fine,compact,1,0"
    return wanted


def library_loaded(soname: str) -> bool:
    """Whether the process holds a library of that soname (dlopen with RTLD_NOLOAD: never loads
    one). Where that cannot be asked, whether paddle is imported (what loads them)."""
    mode = getattr(os, "RTLD_NOLOAD", None)
    if mode is None:
        return "paddle" in sys.modules
    import ctypes

    try:
        ctypes.CDLL(soname, mode=mode | os.RTLD_LAZY)
    except OSError:
        return False
    return True


# ------------------------------------------------------------------ when a package loads Paddle
# What a lost setting costs, measured on a 2-core AMD EPYC VM (family 25, model 17: Zen 4, AVX-512),
# paddlepaddle 3.3.1, 2026-12-05: packages/llama-model/benchmarks/bench_runtime.py (a 1024x1024
# float32 matmul in a process that imported paddle first against one where llama-model loaded it:
# 0.34-0.37x, 1 and 2 threads, three runs), bench_train_step.py --mkl-default (config T's step with
# llama-ops: 0.085-0.088x) and --gomp-spin (0.58x). llama-model's README has the runs.
COST = {
    "MKL_DEBUG_CPU_TYPE": (
        "without it the MKL of Paddle's wheel takes its generic code path on this AMD CPU: a "
        "1024x1024 matmul runs at 0.36x, config T's training step at about 0.09x"
    ),
    "GOMP_SPINCOUNT": (
        "without it llama-ops' libgomp threads spin after each kernel and hold the cores MKL "
        "needs: config T's training step at about 0.6x"
    ),
}

_AT_IMPORT: RuntimeReport | None = None  # what before_paddle_import applied, if it loaded Paddle
_WARNED = False


def before_paddle_import(package: str) -> None:
    """Called by llama-model, llama-infer and llama-ops (``package``: its import name) just before their
    ``import paddle``. When that import is what loads Paddle, apply ``configure_runtime()`` first.
    When the application loaded Paddle already, apply nothing, and warn once per process where
    settings that matter here are missing (``lost_settings``). Without Paddle, do nothing (the
    package's import fails with its own line)."""
    global _AT_IMPORT, _WARNED
    state = _paddle_state()
    if state == "absent":
        return
    if state == "not loaded":
        _AT_IMPORT = configure_runtime()
        return
    lost = lost_settings()
    if lost and not _WARNED:
        _WARNED = True
        _warn_at_caller(lost_message(package, lost))


def applied_at_import() -> RuntimeReport | None:
    """What ``before_paddle_import`` applied when one of the packages loaded Paddle, else None."""
    return _AT_IMPORT


def lost_settings() -> list[str]:
    """The variables ``configure_runtime()`` would set that matter here and were not set when the
    loaded Paddle read them: MKL_DEBUG_CPU_TYPE on an AMD CPU with Paddle's old MKL, GOMP_SPINCOUNT
    where llama-ops' libgomp runs beside Intel's OpenMP (MKL's threads)."""
    lost = []
    wanted = _wanted(pin_threads=False)
    if "MKL_DEBUG_CPU_TYPE" in wanted and _paddle_old_mkl():
        lost.append("MKL_DEBUG_CPU_TYPE")
    if (
        "GOMP_SPINCOUNT" in wanted
        and library_loaded(READ_BY["GOMP_SPINCOUNT"])
        and library_loaded("libiomp5.so")
    ):
        lost.append("GOMP_SPINCOUNT")
    return lost


def lost_message(package: str, lost: list[str]) -> str:
    """The warning: what is lost, what it costs, how to fix it (``package``: the import name)."""
    values = {"MKL_DEBUG_CPU_TYPE": "5", "GOMP_SPINCOUNT": "0"}
    missing = ", ".join(f"{name}={values[name]} ({COST[name]})" for name in lost)
    text = (
        f"Paddle was imported before {package}, without the runtime settings this machine needs: "
        f"{missing}. Fix: import {package} before paddle (it applies them when it loads Paddle), "
        "or call llama_model.configure_runtime() before `import paddle`"
    )
    if "MKL_DEBUG_CPU_TYPE" in lost and not library_loaded(READ_BY["MKL_DEBUG_CPU_TYPE"]):
        text += (
            "; called now, before Paddle's first matrix product, it still sets MKL_DEBUG_CPU_TYPE"
        )
    return text + "."


def _paddle_state() -> str:
    """'loaded', 'not loaded' (importable), or 'absent' (not installed, or blocked)."""
    module = sys.modules.get("paddle", _MISSING)
    if module is None:  # sys.modules["paddle"] = None: importing it raises
        return "absent"
    if module is not _MISSING:
        return "loaded"
    try:
        return "not loaded" if importlib.util.find_spec("paddle") is not None else "absent"
    except (ImportError, ValueError):
        return "absent"


_MISSING = object()


def _paddle_old_mkl() -> bool:
    """Whether the loaded Paddle uses the old MKL that MKL_DEBUG_CPU_TYPE steers (libmklml_intel,
    in its x86 wheels' libs/): loaded already, or shipped beside it."""
    if library_loaded(READ_BY["MKL_DEBUG_CPU_TYPE"]):
        return True
    paddle = sys.modules.get("paddle")
    folder = os.path.dirname(getattr(paddle, "__file__", None) or "")
    return bool(folder) and os.path.exists(os.path.join(folder, "libs", "libmklml_intel.so"))


_OURS = ("llama_model", "llama_ops", "llama_infer", "llama_train", "importlib")


def _warn_at_caller(message: str) -> None:
    """A RuntimeWarning attributed to the first frame outside these packages and the import
    machinery: the application's import line."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").split(".")[0] in _OURS:
        frame = frame.f_back
    module_globals = frame.f_globals
    warnings.warn_explicit(
        message,
        RuntimeWarning,
        frame.f_code.co_filename,
        frame.f_lineno,
        module=module_globals.get("__name__", "__main__"),
        registry=module_globals.setdefault("__warningregistry__", {}),
    )


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

"""What llama-ops does just before its ``import paddle``: the runtime settings, when llama-ops is what
loads Paddle, and one warning when the application loaded Paddle without the ones that matter.

One owner: llama-model's runtime module (``configure_runtime()``, ``before_paddle_import``). When
llama-model is installed, llama-ops calls it, so whichever package loads Paddle the process gets the
same settings, and the warning is said once. llama-ops depends on no package of the project, so
alone it keeps this minimal copy: the two variables its kernels need and that are read when Paddle
loads its libraries, so that nothing can set them later:

* ``MKL_DEBUG_CPU_TYPE=5`` on an AMD CPU with AVX2: the old MKL of Paddle's x86 wheels
  (libmklml_intel) otherwise runs matrix products, the inference kernels' included, on a generic
  path (a 1024x1024 matmul at 0.36x on an AMD EPYC Zen 4). Read when Paddle loads MKL, at its first
  matrix product.
* ``GOMP_SPINCOUNT=0`` when the kernels will load: they run on GCC's OpenMP (libgomp, loaded with
  paddle) beside MKL's Intel OpenMP, and libgomp's threads spinning after each kernel hold the cores
  the next matmul needs (config T's training step at about 0.6x).

Not the allocator policy (glibc keeping freed memory): that is an application's choice, llama-model's
``configure_runtime()``. A variable the user set stands. This module imports nothing heavy.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path

_WARNED = False
_LIBRARY = Path(__file__).with_name("_kernels.dylib" if sys.platform == "darwin" else "_kernels.so")


def before_paddle_import() -> None:
    try:
        from llama_model.runtime import before_paddle_import as owner
    except ImportError:  # llama-ops alone
        _alone()
    else:
        owner("llama_ops")


def _alone() -> None:
    global _WARNED
    wanted = {}
    if "MKL_DEBUG_CPU_TYPE" not in os.environ and _amd_cpu_with_avx2():
        wanted["MKL_DEBUG_CPU_TYPE"] = "5"
    disabled = os.environ.get("LLAMA_OPS_DISABLE", "") not in ("", "0")
    if "GOMP_SPINCOUNT" not in os.environ and not disabled and _LIBRARY.exists():
        wanted["GOMP_SPINCOUNT"] = "0"
    module = sys.modules.get("paddle", _alone)
    if module is None:
        return  # importing paddle raises
    if module is _alone:  # llama-ops loads Paddle: set them first
        try:
            if importlib.util.find_spec("paddle") is None:
                return
        except (ImportError, ValueError):
            return
        os.environ.update(wanted)
        return
    # The application loaded Paddle: say what is lost where it matters, once.
    if "MKL_DEBUG_CPU_TYPE" in wanted and not _old_mkl(module):
        del wanted["MKL_DEBUG_CPU_TYPE"]
    if "GOMP_SPINCOUNT" in wanted and not _loaded("libiomp5.so"):
        del wanted["GOMP_SPINCOUNT"]
    if not wanted or _WARNED:
        return
    _WARNED = True
    costs = {
        "MKL_DEBUG_CPU_TYPE": "without it the MKL of Paddle's wheel takes its generic code path on "
        "this AMD CPU: a 1024x1024 matmul runs at 0.36x",
        "GOMP_SPINCOUNT": "without it llama-ops' libgomp threads spin after each kernel and hold "
        "the cores MKL needs: config T's training step at about 0.6x",
    }
    missing = ", ".join(f"{k}={v} ({costs[k]})" for k, v in wanted.items())
    early = " ".join(f"{k}={v}" for k, v in wanted.items())
    _warn_at_caller(
        f"Paddle was imported before llama_ops, without the runtime settings this machine needs: "
        f"{missing}. Fix: import llama_ops before paddle (it sets them when it loads Paddle), or "
        f"start Python with {early}."
    )


def _warn_at_caller(message: str) -> None:
    """A RuntimeWarning attributed to the application's import line: the first frame outside
    llama_ops and the import machinery."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").split(".")[0] in (
        "llama_ops",
        "importlib",
    ):
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


def _amd_cpu_with_avx2() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            head = fh.read(8192)
    except OSError:
        return False
    return "AuthenticAMD" in head and " avx2" in head


def _loaded(soname: str) -> bool:
    mode = getattr(os, "RTLD_NOLOAD", None)
    if mode is None:
        return True
    import ctypes

    try:
        ctypes.CDLL(soname, mode=mode | os.RTLD_LAZY)
    except OSError:
        return False
    return True


def _old_mkl(paddle) -> bool:
    folder = Path(getattr(paddle, "__file__", None) or ".").parent
    return _loaded("libmklml_intel.so") or (folder / "libs" / "libmklml_intel.so").exists()

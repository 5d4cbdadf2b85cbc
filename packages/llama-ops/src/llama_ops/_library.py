"""Finds and loads the compiled kernels (llama_ops/_kernels.so) once, and records why not if not.

The library is registered with Paddle's custom-operator registry; its operators are then called by
name through paddle._C_ops._run_custom_op (see fused.py). Loading never raises: every failure
becomes a reason string and the package runs on its fallback.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from llama_ops._paddle import paddle

DISABLE_ENV = "LLAMA_OPS_DISABLE"
LIBRARY = Path(__file__).with_name("_kernels.dylib" if sys.platform == "darwin" else "_kernels.so")
BUILD_INFO = Path(__file__).with_name("_build_info.json")
OPS = (
    "fused_rms_norm",
    "fused_rope",
    "fused_swiglu",
    "fused_swiglu_packed",
    "fused_causal_softmax",
    "fused_decoder_layer",
    "fused_norm_head",
)


@dataclass(frozen=True)
class Library:
    loaded: bool
    reason: str  # why the fallback is used when not loaded; what was loaded when it is
    cuda: bool = False  # whether the library holds CUDA kernels


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def _load() -> Library:
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return Library(False, f"{DISABLE_ENV}={os.environ[DISABLE_ENV]}")
    if not LIBRARY.exists():
        return Library(
            False, "this install has no compiled kernels (built without a compiler or Paddle)"
        )
    try:
        info = json.loads(BUILD_INFO.read_text())
    except (OSError, ValueError):
        info = {}
    built_for = info.get("paddle", "")
    if built_for and _major_minor(built_for) != _major_minor(paddle.__version__):
        return Library(
            False,
            f"kernels built for Paddle {built_for}, running Paddle {paddle.__version__}; reinstall "
            "llama-ops from source to rebuild them",
        )
    try:
        from paddle.utils.cpp_extension import load_op_meta_info_and_register_op

        registered = load_op_meta_info_and_register_op(str(LIBRARY))
    except Exception as exc:
        return Library(False, f"loading {LIBRARY.name} failed: {str(exc).strip().splitlines()[0]}")
    missing = [op for op in OPS if op not in registered]
    if missing:
        return Library(False, f"{LIBRARY.name} lacks operators {missing}")
    cuda = bool(info.get("cuda"))
    return Library(True, "cpu+cuda kernels" if cuda else "cpu kernels", cuda=cuda)


LIB = _load()

if not LIB.loaded and not LIB.reason.startswith(DISABLE_ENV):
    # One line, once per process: the package works, only slower.
    warnings.warn(
        f"llama-ops uses its pure-Paddle fallback: {LIB.reason}", RuntimeWarning, stacklevel=2
    )


def gemm_backend() -> str:
    """The GEMM of the inference kernels (fused_decoder_layer, fused_norm_head) in this process:
    "mkl" (the cblas_sgemm of the MKL Paddle loads), "paddle" (Paddle's matmul: a build without
    that MKL, or LLAMA_OPS_BLAS=paddle), or "none" without the library. Chosen once per process, at
    the kernels' first GEMM or this call, whichever comes first, after making Paddle load its MKL
    (csrc/blas.h)."""
    if not LIB.loaded:
        return "none"
    import ctypes

    fn = ctypes.CDLL(str(LIBRARY)).llama_ops_gemm_backend
    fn.restype = ctypes.c_char_p
    return fn().decode()

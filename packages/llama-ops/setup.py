"""Builds llama_ops/_kernels.so (Paddle custom operators) into the package.

Everything else about the package is declared in pyproject.toml. The compiled library is optional
at every step: without Paddle at build time, without a C++ compiler, or when compilation fails, the
package still builds and installs, prints one warning line, and runs on its pure-Paddle fallback.
CUDA kernels are compiled too when the Paddle doing the build is a CUDA build and nvcc is found.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

EXT_NAME = "llama_ops._kernels"
CPU_SOURCES = [
    "csrc/rms_norm.cc",
    "csrc/rope.cc",
    "csrc/swiglu.cc",
    "csrc/causal_softmax.cc",
    "csrc/decoder_layer.cc",
]
CUDA_SOURCES = ["csrc/rms_norm.cu", "csrc/rope.cu", "csrc/swiglu.cu"]
CXX_FLAGS = ["-O3", "-g0", "-std=c++17", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
NVCC_FLAGS = ["-O3", "-std=c++17"]
# The library needs Paddle's libpaddle.so at load time. The Paddle that built it may live in a
# throwaway build environment, so point the loader at the paddle package installed next to llama_ops.
# -ldl: csrc/blas.h finds MKL with dlopen/dlsym (in libc itself only from glibc 2.34).
LINK_FLAGS = [
    "-fopenmp",
    "-ldl",
    "-Wl,-rpath,$ORIGIN/../paddle/base",
    "-Wl,-rpath,$ORIGIN/../paddle/libs",
]


def warn(reason: str) -> None:
    print(
        f"WARNING: llama-ops: compiled kernels not built ({reason}); "
        "the pure-Paddle fallback will be used",
        file=sys.stderr,
    )


def paddle_build():
    """(extension, build_ext class) configured by paddle.utils.cpp_extension, or None."""
    if os.environ.get("LLAMA_OPS_NO_BUILD"):
        warn("LLAMA_OPS_NO_BUILD is set")
        return None
    try:
        import paddle
        from paddle.utils import cpp_extension
    except Exception as exc:
        warn(f"Paddle is not importable at build time: {exc}")
        return None

    with_cuda = bool(paddle.is_compiled_with_cuda()) and cpp_extension.CUDA_HOME is not None
    make = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    ext = make(
        sources=CPU_SOURCES + (CUDA_SOURCES if with_cuda else []),
        name=EXT_NAME,
        extra_compile_args={"cxx": list(CXX_FLAGS), "nvcc": list(NVCC_FLAGS)},
        extra_link_args=list(LINK_FLAGS),
    )
    build_info = {"paddle": paddle.__version__, "cuda": with_cuda}

    class OptionalPaddleBuildExt(cpp_extension.BuildExtension):
        """Paddle's BuildExtension, made optional and shaped for a library inside llama_ops."""

        def __init__(self, *args, **kwargs):
            kwargs["no_python_abi_suffix"] = True
            super().__init__(*args, **kwargs)

        def _generate_python_api_file(self) -> None:
            # llama_ops loads the library itself (llama_ops/_library.py): no generated stub module.
            return

        def run(self) -> None:
            try:
                super().run()
            except (Exception, SystemExit) as exc:  # compilers fail in many ways
                lines = str(exc).strip().splitlines()
                warn(f"{type(exc).__name__}: {lines[-1] if lines else ''}")
                self.failed = True
                return
            finally:
                self._remove_objects()
            library = Path(self.get_ext_fullpath(EXT_NAME))
            if not library.exists():
                warn("the compiler produced no library")
                self.failed = True
                return
            # Paddle leaves its cflags record beside the library; it does not belong in the package.
            (library.parent / "version.txt").unlink(missing_ok=True)
            info = library.parent / "_build_info.json"
            info.write_text(json.dumps(build_info, indent=2) + "\n")

        def _remove_objects(self) -> None:
            # Paddle's BuildExtension writes object files under build_lib (which becomes the
            # wheel), not under build_temp; only the library belongs in the package.
            root = Path(self.build_lib)
            for obj in root.rglob("*.o"):
                obj.unlink()
            for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
                if not any(folder.iterdir()):
                    folder.rmdir()

        def get_outputs(self):
            # After a failed build there is nothing to install; Paddle's own bookkeeping (before the
            # build) expects the one library path.
            if getattr(self, "failed", False):
                return []
            return super().get_outputs()

    return ext, OptionalPaddleBuildExt


configured = paddle_build()
if configured is None:
    setup(cmdclass={"build_ext": build_ext})
else:
    setup(ext_modules=[configured[0]], cmdclass={"build_ext": configured[1]})

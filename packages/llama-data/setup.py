"""Build the optional C extension; all other metadata lives in pyproject.toml.

The extension only speeds up index building. Where it cannot be compiled (no C compiler, an
unusual platform) the package still installs and uses its numpy twins, with one warning.
"""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that reports a failed compile and carries on instead of failing the install."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler at all fails before build_extension is reached
            self.warn(f"llama-data: C extension not built ({exc}); the numpy fallback is used")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self.warn(f"llama-data: C extension not built ({exc}); the numpy fallback is used")


setup(
    ext_modules=[
        Extension(
            "llama_data._sample_index_c",
            sources=["src/llama_data/_sample_index_c.c"],
            extra_compile_args=[] if sys.platform == "win32" else ["-O3"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)

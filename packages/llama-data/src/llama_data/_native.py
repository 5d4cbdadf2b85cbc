"""Loads the optional C extension that builds sample indices and blend indices.

``native()`` returns the module, or ``None`` when it is absent (a machine without a compiler when the
package was installed) or switched off with ``LLAMA_DATA_NO_EXT=1``. Every caller then uses its
numpy twin, which gives identical output, only slower; a missing extension is reported once.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

_DISABLE_ENV = "LLAMA_DATA_NO_EXT"
_module: ModuleType | None = None
_loaded = False


def native() -> ModuleType | None:
    """The C extension module, or None (numpy fallback)."""
    global _module, _loaded
    if os.environ.get(_DISABLE_ENV, "") not in ("", "0"):
        return None
    if not _loaded:
        _loaded = True
        try:
            from llama_data import _sample_index_c
        except ImportError as exc:
            # warn_explicit with no source file: one line on stderr, still filterable.
            warnings.warn_explicit(
                f"C extension unavailable ({exc}); building indices with numpy "
                "(same result, slower)",
                RuntimeWarning,
                "llama_data",
                0,
                module="llama_data._native",
            )
        else:
            _module = _sample_index_c
    return _module


def select(use_extension: bool | None) -> ModuleType | None:
    """The extension if wanted and available: None = when available, False = never, True = must."""
    if use_extension is False:
        return None
    mod = native()
    if use_extension and mod is None:
        raise RuntimeError(
            f"the llama-data C extension is not available (or {_DISABLE_ENV} is set)"
        )
    return mod

"""Merge, convert, inspect and compare Paddle distributed checkpoints of LLaMA models, without Paddle."""

from .distcp import DistCheckpoint
from .dtypes import to_float32
from .errors import CheckpointError, UnsafePickleError
from .export import export
from .layouts import from_hf_name, state_dict_from_hf, state_dict_to_hf, to_hf_name
from .merge import merge
from .pdparams_io import read_pdparams
from .safe_pickle import load as safe_load
from .sources import Canonical, digest, open_source
from .verify import compare
from .version import __version__

__all__ = [
    "Canonical",
    "CheckpointError",
    "DistCheckpoint",
    "UnsafePickleError",
    "__version__",
    "compare",
    "digest",
    "export",
    "from_hf_name",
    "merge",
    "open_source",
    "read_pdparams",
    "safe_load",
    "state_dict_from_hf",
    "state_dict_to_hf",
    "to_float32",
    "to_hf_name",
]

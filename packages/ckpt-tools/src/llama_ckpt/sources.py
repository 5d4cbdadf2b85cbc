"""Every kind of input behind one interface: names(), info(name), read(name), config_dir().

- a Paddle distributed checkpoint directory (`*.metadata` + `*.distcp`), see `distcp.py`;
- a `.pdparams` file (`paddle.save` of a state dict);
- a `.safetensors` file, or a model directory (`model.safetensors.index.json` or `*.safetensors`,
  or one `*.pdparams`).

`read` returns the tensor in its storage dtype (bf16 as uint16 bits); `info` gives the true dtype.
`Canonical` wraps a source so that names and orientation are the paddle layout's whatever the
input's layout, which is what export and verify work on.
"""

from __future__ import annotations

import json
import os

import numpy as np

from . import dtypes, layouts
from .distcp import DistCheckpoint, is_dist_checkpoint
from .errors import CheckpointError
from .pdparams_io import read_pdparams
from .safetensors_io import Entry, read_header, read_tensor

INDEX = "model.safetensors.index.json"


class PdparamsSource:
    kind = "pdparams"

    def __init__(self, path: str):
        self.path = path
        self.arrays = read_pdparams(path)
        self._dtypes = {n: dtypes.from_numpy(a.dtype) for n, a in self.arrays.items()}

    def names(self) -> list[str]:
        return list(self.arrays)

    def info(self, name: str) -> tuple[dtypes.DType, tuple[int, ...]]:
        return self._dtypes[name], tuple(self.arrays[name].shape)

    def read(self, name: str) -> np.ndarray:
        return self.arrays[name].read()

    def config_dir(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))


class SafetensorsSource:
    kind = "safetensors"

    def __init__(self, path: str, files: list[str]):
        self.path = path
        self.entries: dict[str, tuple[str, Entry]] = {}
        self.files = files
        for file in files:
            for e in read_header(file)[0]:
                if e.name in self.entries:
                    raise CheckpointError(
                        f"{e.name} is in both {self.entries[e.name][0]} and {file}"
                    )
                self.entries[e.name] = (file, e)

    def names(self) -> list[str]:
        return list(self.entries)

    def info(self, name: str) -> tuple[dtypes.DType, tuple[int, ...]]:
        e = self.entries[name][1]
        return e.dtype, e.shape

    def read(self, name: str) -> np.ndarray:
        file, e = self.entries[name]
        return read_tensor(file, e)

    def config_dir(self) -> str:
        return (
            self.path if os.path.isdir(self.path) else os.path.dirname(os.path.abspath(self.path))
        )


def _model_dir_files(path: str) -> list[str] | None:
    index = os.path.join(path, INDEX)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError):
            raise CheckpointError(f"{index} is not a safetensors index") from None
        files = []
        for file in weight_map.values():
            if file not in files:
                files.append(file)
        for file in files:
            if not os.path.isfile(os.path.join(path, file)):
                raise CheckpointError(f"{os.path.join(path, file)} is missing (named by {INDEX})")
        return [os.path.join(path, f) for f in files]
    found = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    return [os.path.join(path, f) for f in found] or None


def open_source(path: str, prefix: str | None = None, unique_id: int | None = None):
    if not os.path.exists(path):
        raise CheckpointError(f"{path} does not exist")
    if os.path.isdir(path):
        if is_dist_checkpoint(path):
            return DistCheckpoint(path, prefix=prefix, unique_id=unique_id)
        files = _model_dir_files(path)
        if files:
            return SafetensorsSource(path, files)
        pdparams = sorted(f for f in os.listdir(path) if f.endswith(".pdparams"))
        if len(pdparams) == 1:
            return PdparamsSource(os.path.join(path, pdparams[0]))
        raise CheckpointError(
            f"{path} is not a checkpoint: no *.metadata (Paddle distributed "
            "checkpoint), *.safetensors or single *.pdparams in it"
        )
    if path.endswith(".safetensors"):
        return SafetensorsSource(path, [path])
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic[:1] == b"\x80":  # a pickle
        return PdparamsSource(path)
    raise CheckpointError(f"{path} is neither a .pdparams (pickle) nor a .safetensors file")


class Canonical:
    """A source seen in the paddle layout (names and `[in, out]` Linear weights)."""

    def __init__(self, source):
        self.source = source
        names = source.names()
        self.layout = layouts.detect(names)
        if self.layout == layouts.HF:
            self._to_source = {layouts.from_hf_name(n): n for n in names}
        else:
            self._to_source = {n: n for n in names}

    def names(self) -> list[str]:
        return list(self._to_source)

    def info(self, name: str) -> tuple[dtypes.DType, tuple[int, ...]]:
        dt, shape = self.source.info(self._to_source[name])
        if self.layout == layouts.HF and layouts.is_linear(name, len(shape)):
            shape = tuple(reversed(shape))
        return dt, shape

    def read(self, name: str) -> np.ndarray:
        array = self.source.read(self._to_source[name])
        if self.layout == layouts.HF:
            return layouts.from_hf(self._to_source[name], array)[1]
        return array

    def config_dir(self) -> str:
        return self.source.config_dir()

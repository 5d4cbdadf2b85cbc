"""Every kind of input behind one interface: names(), info(name), read(name), config_dir().

- a Paddle distributed checkpoint directory (`*.metadata` + `*.distcp`), see `distcp.py`;
- a `.pdparams` file (`paddle.save` of a state dict);
- a `.safetensors` file, or a model directory (`model.safetensors.index.json` or `*.safetensors`,
  or one `*.pdparams`).

`read` returns the tensor in its storage dtype (bf16 as uint16 bits); `info` gives the true dtype.
`read_slice(name, axis, start, stop)` reads only that part of a tensor where the format allows it
(safetensors, and the arrays of a `.pdparams`); `digest` fingerprints a source from its headers.
`Canonical` wraps a source so that names and orientation are the paddle layout's whatever the
input's layout, which is what export and verify work on.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from . import dtypes, layouts
from .distcp import DistCheckpoint, is_dist_checkpoint
from .errors import CheckpointError
from .pdparams_io import read_pdparams
from .safetensors_io import Entry, read_header, read_tensor
from .slicing import read_along, take_along

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

    def read_slice(self, name: str, axis: int, start: int, stop: int) -> np.ndarray:
        stored = self.arrays[name]
        if stored.span is None or stored.fortran or stored.dtype.byteorder == ">":
            return take_along(stored.read(), axis, start, stop)
        return read_along(
            self.path, stored.span.offset, stored.shape, stored.dtype, axis, start, stop
        )

    def config_dir(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))


class SafetensorsSource:
    kind = "safetensors"

    def __init__(self, path: str, files: list[str], weight_map: dict[str, str] | None = None):
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
        for name, file in (weight_map or {}).items():
            where = self.entries.get(name, (None,))[0]
            if where is None or os.path.basename(where) != os.path.basename(file):
                raise CheckpointError(f"{INDEX} puts {name} in {file}, which does not hold it")

    def names(self) -> list[str]:
        return list(self.entries)

    def info(self, name: str) -> tuple[dtypes.DType, tuple[int, ...]]:
        e = self.entries[name][1]
        return e.dtype, e.shape

    def read(self, name: str) -> np.ndarray:
        file, e = self.entries[name]
        return read_tensor(file, e)

    def read_slice(self, name: str, axis: int, start: int, stop: int) -> np.ndarray:
        file, e = self.entries[name]
        return read_along(file, e.offset, e.shape, e.dtype.storage, axis, start, stop)

    def config_dir(self) -> str:
        return (
            self.path if os.path.isdir(self.path) else os.path.dirname(os.path.abspath(self.path))
        )


def _model_dir_files(path: str) -> tuple[list[str], dict[str, str] | None] | None:
    """The safetensors files of a model directory (and the index's weight map, if it has one)."""
    index = os.path.join(path, INDEX)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{index} is not a safetensors index") from None
        files = []
        for file in weight_map.values():
            if file not in files:
                files.append(file)
        for file in files:
            # A hub snapshot's files may be links into its blob store; the names must stay inside.
            if os.path.isabs(file) or os.path.normpath(file).split(os.sep)[0] == os.pardir:
                raise CheckpointError(f"{index} names {file}, a file outside {path}")
            if not os.path.isfile(os.path.join(path, file)):
                raise CheckpointError(f"{os.path.join(path, file)} is missing (named by {INDEX})")
        return [os.path.join(path, f) for f in files], weight_map
    found = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    return ([os.path.join(path, f) for f in found], None) if found else None


def open_source(path: str, prefix: str | None = None, unique_id: int | None = None):
    if not os.path.exists(path):
        raise CheckpointError(f"{path} does not exist")
    if os.path.isdir(path):
        if is_dist_checkpoint(path):
            return DistCheckpoint(path, prefix=prefix, unique_id=unique_id)
        found = _model_dir_files(path)
        if found:
            return SafetensorsSource(path, *found)
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


def digest(source) -> str:
    """A fingerprint of a source read from its headers only: every tensor's name, dtype, shape and,
    for safetensors, file and offset (so it also covers the index). sha256, hex."""
    rows = []
    for name in sorted(source.names()):
        dt, shape = source.info(name)
        row = [name, dt.name, list(shape)]
        entries = getattr(source, "entries", None)
        if entries is not None:
            file, entry = entries[name]
            row += [os.path.basename(file), entry.offset]
        rows.append(row)
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


class Canonical:
    """A source seen in the paddle layout (names and `[in, out]` Linear weights).

    ``layout``: the source's layout (``paddle`` or ``hf``); None detects it from the names, falling
    back to paddle when they say nothing (``strict`` raises instead)."""

    def __init__(self, source, layout: str | None = None, strict: bool = False):
        self.source = source
        names = source.names()
        if layout is None:
            layout = layouts.detect(names, default=None if strict else layouts.PADDLE)
            if layout is None:
                sample = ", ".join(sorted(names)[:3]) or "no tensors"
                raise CheckpointError(
                    f"cannot tell the layout from the tensor names ({sample}); name it (paddle or hf)"
                )
        elif layout not in layouts.LAYOUTS:
            raise CheckpointError(
                f"unknown layout {layout!r} (known: {', '.join(layouts.LAYOUTS)})"
            )
        self.layout = layout
        if self.layout == layouts.HF:
            self._to_source = {layouts.from_hf_name(n): n for n in names}
        else:
            self._to_source = {n: n for n in names}

    def names(self) -> list[str]:
        return list(self._to_source)

    def stored_name(self, name: str) -> str:
        return self._to_source[name]

    def _transposed(self, name: str, ndim: int) -> bool:
        return self.layout == layouts.HF and layouts.is_linear(name, ndim)

    def info(self, name: str) -> tuple[dtypes.DType, tuple[int, ...]]:
        dt, shape = self.source.info(self._to_source[name])
        if self._transposed(name, len(shape)):
            shape = tuple(reversed(shape))
        return dt, shape

    def read(self, name: str) -> np.ndarray:
        array = self.source.read(self._to_source[name])
        if self.layout == layouts.HF:
            return layouts.from_hf(self._to_source[name], array)[1]
        return array

    def read_slice(self, name: str, axis: int, start: int, stop: int) -> np.ndarray:
        """``read(name)[..., start:stop, ...]`` on ``axis`` of the paddle-layout tensor, reading
        only that part where the source can (a transposed Linear is sliced on its other axis)."""
        stored = self._to_source[name]
        ndim = len(self.source.info(stored)[1])
        transposed = self._transposed(name, ndim)
        stored_axis = ndim - 1 - axis if transposed else axis
        if hasattr(self.source, "read_slice"):
            part = self.source.read_slice(stored, stored_axis, start, stop)
        else:
            part = take_along(self.source.read(stored), stored_axis, start, stop)
        return np.ascontiguousarray(part.T) if transposed else part

    def config_dir(self) -> str:
        return self.source.config_dir()

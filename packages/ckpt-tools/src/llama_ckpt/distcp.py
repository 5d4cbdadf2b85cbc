"""Read a Paddle distributed checkpoint (`dist.save_state_dict`) without Paddle.

A checkpoint directory holds, per save ("unique id" `uid`), one `{uid}.metadata` and one
`{rank}_{uid}.distcp` per rank (`{rank}_{uid}.safetensors` when saved with `safetensors=True`).
The metadata says, for every key, which box of the global tensor each rank stored, and which file
holds it. Opening a checkpoint reads the metadata and the small pickle skeleton of every data file,
and checks the two against each other; tensor data is read only when a tensor is asked for.

Keys are `model.<param>` and `optimizer.<state>` when the trainer saved `{"model": ..., "optimizer":
...}`. `prefix` selects one group and strips it: the default takes `model.` when any key has it,
else every key as it is (a plain `dist.save_state_dict(model.state_dict())`). `prefix=""` takes
every key unchanged.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from . import dtypes
from .assemble import Piece, assemble, plan
from .errors import CheckpointError
from .paddle_metadata import LocalTensorIndex, LocalTensorMetadata, Metadata
from .safe_pickle import StoredArray, read_span
from .safe_pickle import load as safe_load
from .safetensors_io import read_header

_METADATA = re.compile(r"^(\d+)\.metadata$")
_DATA = re.compile(r"^(\d+)_(\d+)\.(distcp|safetensors)$")
DEFAULT_PREFIX = "model"
KNOWN_GROUPS = ("model", "optimizer")


@dataclass
class StoredPiece:
    file: str  # data file name, relative to the checkpoint directory
    rank: int
    offset: tuple[int, ...]
    shape: tuple[int, ...]  # the box's shape
    flat_range: tuple[int, int] | None
    replica_id: int | None


@dataclass
class TensorLayout:
    key: str  # the key in the checkpoint (with its prefix)
    dtype: dtypes.DType
    shape: tuple[int, ...]
    pieces: list[StoredPiece] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def is_dist_checkpoint(path: str) -> bool:
    return os.path.isdir(path) and any(_METADATA.match(f) for f in os.listdir(path))


def unique_ids(path: str) -> list[int]:
    return sorted(int(m.group(1)) for f in os.listdir(path) if (m := _METADATA.match(f)))


class DistCheckpoint:
    def __init__(self, path: str, prefix: str | None = None, unique_id: int | None = None):
        if not os.path.isdir(path):
            raise CheckpointError(f"{path} is not a directory")
        uids = unique_ids(path)
        if not uids:
            raise CheckpointError(
                f"{path} is not a Paddle distributed checkpoint (no *.metadata file)"
            )
        if unique_id is None:
            unique_id = uids[-1]
        elif unique_id not in uids:
            raise CheckpointError(
                f"{path} has no checkpoint with unique id {unique_id} "
                f"(found: {', '.join(map(str, uids))})"
            )
        self.path, self.unique_id, self.unique_ids = path, unique_id, uids
        meta = safe_load(os.path.join(path, f"{unique_id}.metadata"))
        if (
            not isinstance(meta, Metadata)
            or not isinstance(meta.state_dict_metadata, dict)
            or not isinstance(meta.storage_metadata, dict)
        ):
            raise CheckpointError(f"{path}/{unique_id}.metadata is not Paddle checkpoint metadata")
        self.metadata = meta
        self.all_keys = list(meta.state_dict_metadata)
        self.prefix = self._resolve_prefix(prefix)
        self.tensors = self._layouts()
        self._files: dict[str, dict[str, object]] = {}
        self._index_files()

    # -- keys -------------------------------------------------------------------------------
    def _resolve_prefix(self, prefix: str | None) -> str:
        if prefix is None:
            has_groups = any(k.split(".", 1)[0] in KNOWN_GROUPS for k in self.all_keys)
            return DEFAULT_PREFIX if has_groups else ""
        prefix = prefix.rstrip(".")
        if prefix and not any(k.startswith(prefix + ".") for k in self.all_keys):
            groups = sorted({k.split(".", 1)[0] for k in self.all_keys})
            raise CheckpointError(
                f"{self.path}: no key starts with {prefix + '.'!r} "
                f"(key groups: {', '.join(groups[:10])}; --prefix '' takes all)"
            )
        return prefix

    def name_of(self, key: str) -> str | None:
        if not self.prefix:
            return key
        return key[len(self.prefix) + 1 :] if key.startswith(self.prefix + ".") else None

    # -- layouts ----------------------------------------------------------------------------
    def _layouts(self) -> dict[str, TensorLayout]:
        meta = self.metadata
        by_key: dict[str, list[tuple[LocalTensorIndex, str]]] = {}
        for index, file in meta.storage_metadata.items():
            if not isinstance(index, LocalTensorIndex) or not isinstance(file, str):
                raise CheckpointError(f"{self.path}: malformed storage metadata")
            by_key.setdefault(index.tensor_key, []).append((index, file))
        out: dict[str, TensorLayout] = {}
        for key, locals_ in meta.state_dict_metadata.items():
            name = self.name_of(key)
            if name is None:
                continue
            if not locals_ or not all(isinstance(m, LocalTensorMetadata) for m in locals_):
                raise CheckpointError(f"{self.path}: malformed metadata for {key}")
            dt = dtypes.dtype(locals_[0].dtype)
            for m in locals_:
                if m.dtype != locals_[0].dtype:
                    raise CheckpointError(
                        f"{key}: pieces of different dtypes ({locals_[0].dtype}, {m.dtype})"
                    )
            shape = _global_shape(key, locals_)
            layout = TensorLayout(key, dt, shape)
            box_shapes = {tuple(m.global_offset): tuple(m.local_shape) for m in locals_}
            for index, file in by_key.get(key, []):
                m = _DATA.match(file)
                if not m:
                    raise CheckpointError(
                        f"{self.path}: metadata names an unexpected data file {file!r}"
                    )
                box = (
                    tuple(index.local_shape)
                    if index.local_shape is not None
                    else box_shapes.get(tuple(index.global_offset))
                )
                if box is None:
                    raise CheckpointError(
                        f"{key}: no shape known for the piece at {index.global_offset}"
                    )
                flat = tuple(index.flattened_range) if index.is_flattened else None
                layout.pieces.append(
                    StoredPiece(
                        file,
                        int(m.group(1)),
                        tuple(index.global_offset),
                        box,
                        flat,
                        index.replica_id,
                    )
                )
            if not layout.pieces:
                raise CheckpointError(f"{key}: the metadata names no file holding it")
            out[name] = layout
        return out

    # -- data files -------------------------------------------------------------------------
    def _index_files(self) -> None:
        files = sorted({p.file for t in self.tensors.values() for p in t.pieces})
        for file in files:
            full = os.path.join(self.path, file)
            if not os.path.isfile(full):
                raise CheckpointError(f"{full} is missing (named by {self.unique_id}.metadata)")
            if file.endswith(".distcp"):
                content = safe_load(full)
                if not isinstance(content, dict):
                    raise CheckpointError(f"{full}: not a checkpoint data file")
                self._files[file] = content
            else:
                self._files[file] = {e.name: e for e in read_header(full)[0]}
        for layout in self.tensors.values():
            for p in layout.pieces:
                self._check_piece(layout, p)
            plan(layout.key, layout.shape, self._pieces(layout))  # gaps fail here, before any write

    def _stored(self, layout: TensorLayout, p: StoredPiece):
        stored = self._files[p.file].get(layout.key)
        if stored is None:
            raise CheckpointError(
                f"{os.path.join(self.path, p.file)} has no tensor {layout.key} "
                "(the metadata says it does)"
            )
        return stored

    def _check_piece(self, layout: TensorLayout, p: StoredPiece) -> None:
        stored = self._stored(layout, p)
        want = (p.flat_range[1] - p.flat_range[0],) if p.flat_range else p.shape
        where = os.path.join(self.path, p.file)
        if isinstance(stored, StoredArray):
            shape, np_dtype = stored.shape, stored.dtype.newbyteorder("=")
            ok_dtype = np_dtype == layout.dtype.storage
        elif hasattr(stored, "dtype") and hasattr(stored, "shape"):
            shape, np_dtype = stored.shape, stored.dtype.name
            ok_dtype = stored.dtype.name == layout.dtype.name
        else:
            raise CheckpointError(f"{where}: {layout.key} is not an array")
        if tuple(shape) != tuple(want):
            raise CheckpointError(
                f"{where}: {layout.key} has shape {tuple(shape)}, the metadata says {tuple(want)}"
            )
        if not ok_dtype:
            raise CheckpointError(
                f"{where}: {layout.key} is stored as {np_dtype}, "
                f"the metadata says {layout.dtype.name}"
            )

    def _pieces(self, layout: TensorLayout) -> list[Piece]:
        pieces = []
        for p in layout.pieces:
            stored = self._stored(layout, p)
            full = os.path.join(self.path, p.file)
            if isinstance(stored, StoredArray):
                reader = stored.read_into
            else:
                reader = _safetensors_reader(full, stored.offset)
            pieces.append(Piece(p.offset, p.shape, reader, p.flat_range, p.file))
        return pieces

    # -- the TensorSource interface -----------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.tensors)

    def info(self, name: str) -> tuple[dtypes.DType, tuple[int, ...]]:
        t = self.tensors[name]
        return t.dtype, t.shape

    def read(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        return assemble(t.key, t.shape, t.dtype.storage, self._pieces(t))

    def config_dir(self) -> str:
        return self.path


def _safetensors_reader(path: str, offset: int):
    def read_into(out: np.ndarray) -> None:
        read_span(path, offset, memoryview(out.reshape(-1).view(np.uint8)))

    return read_into


def _global_shape(key: str, locals_: list[LocalTensorMetadata]) -> tuple[int, ...]:
    shapes = {tuple(m.global_shape) for m in locals_ if m.global_shape is not None}
    if len(shapes) > 1:
        raise CheckpointError(f"{key}: pieces disagree on the global shape: {sorted(shapes)}")
    if shapes:
        return shapes.pop()
    # older metadata has no global shape: the furthest corner any piece reaches
    ndim = len(locals_[0].local_shape)
    return tuple(max(m.global_offset[d] + m.local_shape[d] for m in locals_) for d in range(ndim))

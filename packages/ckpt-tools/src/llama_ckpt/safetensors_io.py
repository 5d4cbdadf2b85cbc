"""Streaming reader and writer of the safetensors format.

The format is an 8-byte little-endian header length, a JSON header
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`) and the
tensors' bytes back to back. Because every size is known before any data is read, the writer puts
the header first and then takes tensors one at a time: a file of any size is written holding one
tensor in memory. The `safetensors` library cannot do that (it wants every tensor at once) and
cannot hand bfloat16 to numpy, which is why this module exists; the tests check its files against
that library.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

import numpy as np

from . import dtypes
from .errors import CheckpointError
from .safe_pickle import read_span

_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: dtypes.DType
    shape: tuple[int, ...]
    offset: int  # from the start of the file
    nbytes: int


def read_header(path: str) -> tuple[list[Entry], dict[str, str]]:
    """The tensors of a safetensors file (in data order) and its `__metadata__`."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise CheckpointError(f"{path}: file is truncated (no safetensors header)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{path}: not a safetensors file or truncated header")
            header = json.loads(f.read(n))
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: not a safetensors file (bad header)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (bad header)")
    metadata = header.pop("__metadata__", None) or {}
    entries = []
    data_start = 8 + n
    for name, spec in header.items():
        try:
            dt = dtypes.from_safetensors(spec["dtype"])
            shape = tuple(int(d) for d in spec["shape"])
            begin, end = (int(x) for x in spec["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: malformed header entry for {name!r}") from None
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if end - begin != nbytes or begin < 0:
            raise CheckpointError(f"{path}: {name!r} has {end - begin} bytes, expected {nbytes}")
        if data_start + end > size:
            raise CheckpointError(f"{path}: file is truncated ({name!r} runs past the end)")
        entries.append(Entry(name, dt, shape, data_start + begin, nbytes))
    entries.sort(key=lambda e: e.offset)
    return entries, metadata


def read_tensor(path: str, entry: Entry) -> np.ndarray:
    out = np.empty(entry.shape, dtype=entry.dtype.storage)
    read_span(path, entry.offset, memoryview(out.reshape(-1).view(np.uint8)))
    return out


class SafetensorsWriter:
    """Write tensors one at a time, in the order given up front, to a safetensors file."""

    def __init__(
        self,
        path: str,
        entries: list[tuple[str, dtypes.DType, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ):
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = metadata
        offset = 0
        self._expected = []
        for name, dt, shape in entries:
            if dt.safetensors is None:
                raise CheckpointError(f"{name}: safetensors cannot store {dt.name} tensors")
            nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            header[name] = {
                "dtype": dt.safetensors,
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            self._expected.append((name, dt, tuple(shape)))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as the reference writer does
        self.path = path
        self._f = open(path, "wb")  # noqa: SIM115 (closed in close())
        self._f.write(struct.pack("<Q", len(raw)) + raw)
        self._next = 0

    def write(self, name: str, array: np.ndarray) -> None:
        want, dt, shape = self._expected[self._next]
        if name != want or tuple(array.shape) != shape or array.dtype != dt.storage:
            raise ValueError(
                f"expected {want} {shape} {dt.storage}, got {name} {array.shape} {array.dtype}"
            )
        array = array if array.flags.c_contiguous else array.copy(order="C")
        self._f.write(memoryview(array.reshape(-1).view(np.uint8)))
        self._next += 1

    def close(self) -> None:
        self._f.close()
        if self._next != len(self._expected):
            raise ValueError(f"{self.path}: {len(self._expected) - self._next} tensors not written")

    def abort(self) -> None:
        self._f.close()

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
    """The tensors of a safetensors file (in data order) and its `__metadata__`.

    The header is checked as the `safetensors` library checks it: every tensor's byte count is its
    dtype's size times its shape, and the tensors' `data_offsets`, sorted, tile the data section
    exactly (from 0 to the end of the file, no gap, no overlap: two names never share bytes)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise CheckpointError(f"{path}: file is truncated (no safetensors header)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{path}: not a safetensors file or truncated header")
            header = json.loads(f.read(n), object_pairs_hook=_no_duplicate_keys)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: not a safetensors file (bad header)") from None
    except _DuplicateKey as e:
        raise CheckpointError(f"{path}: the header names {e.args[0]!r} twice") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (bad header)")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    spans = []
    for name, spec in header.items():
        try:
            dt = dtypes.from_safetensors(spec["dtype"])
            shape = tuple(_count(d) for d in spec["shape"])
            begin, end = (_count(x) for x in spec["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: malformed header entry for {name!r}") from None
        if end < begin:
            raise CheckpointError(
                f"{path}: {name!r} has data_offsets [{begin}, {end}], which end before they begin"
            )
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if end - begin != nbytes:
            raise CheckpointError(
                f"{path}: {name!r} has {end - begin} bytes, expected {nbytes} "
                f"({dt.name} {list(shape)})"
            )
        spans.append((begin, end, name, dt, shape))
    spans.sort(key=lambda s: (s[0], s[1]))
    data_size = size - data_start
    entries = []
    at, previous = 0, None
    for begin, end, name, dt, shape in spans:
        if begin != at:
            where = (
                f"overlaps {previous!r} (which ends at byte {at})"
                if begin < at
                else f"leaves bytes {at}-{begin} unclaimed"
                + (f" after {previous!r}" if previous else "")
            )
            raise CheckpointError(
                f"{path}: {name!r} starts at byte {begin} of the data and {where}; "
                "each tensor must have bytes of its own, back to back"
            )
        if end > data_size:
            raise CheckpointError(f"{path}: file is truncated ({name!r} runs past the end)")
        entries.append(Entry(name, dt, shape, data_start + begin, end - begin))
        at, previous = end, name
    if at != data_size:
        raise CheckpointError(
            f"{path}: {data_size - at} bytes after the last tensor"
            + (f" ({previous!r})" if previous else "")
            + " that no tensor claims"
        )
    return entries, metadata


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _count(value: object) -> int:
    """A non-negative JSON integer (not a float, not a bool), as the format requires."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(value)
    return value


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

"""Write and read `.pdparams` files (what `paddle.save` writes for a state dict) without Paddle.

A `.pdparams` file is a pickled dict of numpy arrays; `paddle.load` turns each array into a
tensor, and a uint16 array into a bfloat16 tensor (Paddle's own convention, which `paddle.save`
follows for bf16). The writer streams: it emits the pickle opcodes of `{name: array, ...}` itself,
one tensor at a time, so writing a model never holds more than one tensor.
"""

from __future__ import annotations

import io
import pickle
import struct
from typing import Any

import numpy as np

from . import dtypes
from .errors import CheckpointError
from .safe_pickle import StoredArray
from .safe_pickle import load as safe_load


def _fragment(obj: Any) -> bytes:
    """The opcodes that push `obj`, without PROTO/STOP and without memo (so fragments concatenate)."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=3)
    pickler.fast = True  # no MEMOIZE/GET: indices would clash between fragments
    pickler.dump(obj)
    raw = buf.getvalue()
    assert raw[:2] == b"\x80\x03" and raw[-1:] == b"."
    return raw[2:-1]


_RECONSTRUCT = _fragment(np.ndarray.__reduce__(np.zeros(0))[0]) + _fragment(
    (np.ndarray, (0,), b"b")
)


class PdparamsWriter:
    def __init__(self, path: str):
        self.path = path
        self._f = open(path, "wb")  # noqa: SIM115 (closed in close())
        self._f.write(b"\x80\x04}")  # PROTO 4, EMPTY_DICT

    def write(self, name: str, array: np.ndarray, dt: dtypes.DType) -> None:
        if dt.storage != array.dtype:
            raise ValueError(f"{name}: array dtype {array.dtype} is not the storage of {dt.name}")
        if dt.name.startswith("float8"):
            raise CheckpointError(
                f"{name}: a .pdparams file cannot hold {dt.name}; write safetensors"
            )
        array = array if array.flags.c_contiguous else array.copy(order="C")  # keeps 0-d arrays 0-d
        f = self._f
        f.write(_fragment(name))
        f.write(_RECONSTRUCT + b"R(")  # REDUCE, MARK for the state tuple
        f.write(
            _fragment(1) + _fragment(tuple(array.shape)) + _fragment(array.dtype) + _fragment(False)
        )
        f.write(b"\x8e" + struct.pack("<Q", array.nbytes))  # BINBYTES8
        f.write(memoryview(array.reshape(-1).view(np.uint8)))
        f.write(b"tbs")  # TUPLE, BUILD, SETITEM

    def close(self) -> None:
        self._f.write(b".")
        self._f.close()

    def abort(self) -> None:
        self._f.close()


def read_pdparams(path: str) -> dict[str, StoredArray]:
    """The arrays of a `.pdparams` file by (dotted) name; nothing is read but the pickle's skeleton."""
    obj = safe_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a state dict (a pickled {type(obj).__name__})")
    out: dict[str, StoredArray] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, StoredArray):
            out[prefix] = value
        elif isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], StoredArray):
            out[prefix] = value[1]  # paddle.save writes tensors as (tensor name, array)
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str) and not k.endswith("@@"):  # Paddle's bookkeeping entries
                    visit(f"{prefix}.{k}" if prefix else k, v)

    visit("", obj)
    return out

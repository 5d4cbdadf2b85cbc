"""The restricted unpickler reads what numpy/pickle write, lazily, and refuses everything else."""

from __future__ import annotations

import collections
import os
import pickle

import numpy as np
import pytest

from llama_ckpt import UnsafePickleError, read_pdparams, safe_load
from llama_ckpt.dtypes import dtype
from llama_ckpt.errors import CheckpointError
from llama_ckpt.pdparams_io import PdparamsWriter
from llama_ckpt.safe_pickle import LAZY_BYTES, StoredArray

ARRAYS = {
    "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
    "big": np.random.default_rng(0).standard_normal((300, 100)),  # > LAZY_BYTES: stays on disk
    "u16": np.arange(5, dtype=np.uint16),
    "i64": np.array([-(2**62), 3], dtype=np.int64),
    "b": np.array([True, False]),
    "f16": np.array([1.5, -2.0], dtype=np.float16),
    "c64": np.array([1 + 2j], dtype=np.complex64),
    "scalar": np.array(7, dtype=np.int32),
    "fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    "bigendian": np.arange(4, dtype=">i4"),
    "empty": np.zeros((0, 3), dtype=np.float32),
}


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_reads_what_pickle_writes(tmp_path, protocol):
    path = tmp_path / "x.pkl"
    meta = {
        "list": [1, 2.5, None, True],
        "tuple": (1, "a"),
        "set": {1, 2},
        "frozen": frozenset({3}),
        "od": collections.OrderedDict(a=1),
        "bytes": b"xyz",
        "neg": -5,
        "huge": 2**70,
    }
    with open(path, "wb") as f:
        pickle.dump({"arrays": ARRAYS, "meta": meta, "again": ARRAYS["f32"]}, f, protocol=protocol)
    got = safe_load(str(path))
    assert got["meta"] == meta
    for name, want in ARRAYS.items():
        stored = got["arrays"][name]
        assert isinstance(stored, StoredArray)
        value = stored.read()
        assert value.shape == want.shape and value.dtype == want.dtype.newbyteorder("=")
        assert np.array_equal(value, want), name
    if protocol >= 4:
        assert got["arrays"]["big"].span is not None  # bytes left on disk until read
        assert got["arrays"]["big"].span.length == ARRAYS["big"].nbytes >= LAZY_BYTES
    assert got["again"] is got["arrays"]["f32"]  # memo references resolve to the same object


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    "payload",
    [
        _Evil(),
        {"x": eval},
        {"x": np.load},
        {"x": collections.Counter},
        np.array([object()], dtype=object),
        np.zeros(2, dtype=[("a", "<f4")]),
    ],
)
def test_refuses_anything_but_data(tmp_path, payload):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump(payload, f, protocol=4)
    with pytest.raises(UnsafePickleError):
        safe_load(str(path))


def test_refuses_unknown_opcodes_and_garbage(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"\x80\x04cos\nsystem\n(S'echo hi'\ntR.")
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        safe_load(str(path))
    path.write_bytes(b"\x80\x04I1\n.")  # text-mode INT is not something checkpoints use
    with pytest.raises(UnsafePickleError, match="opcode"):
        safe_load(str(path))
    path.write_bytes(b"\x80\x04}\x94(")  # cut short
    with pytest.raises(CheckpointError, match="truncated"):
        safe_load(str(path))


def test_pdparams_writer_streams_a_standard_pickle(tmp_path):
    path = tmp_path / "m.pdparams"
    writer = PdparamsWriter(str(path))
    values = {
        "a": ARRAYS["f32"],
        "big": ARRAYS["big"],
        "bf16": np.arange(3, dtype=np.uint16),
        "s": ARRAYS["scalar"],
        "b": ARRAYS["b"],
    }
    names = {"a": "float32", "big": "float64", "bf16": "bfloat16", "s": "int32", "b": "bool"}
    for k, v in values.items():
        writer.write(k, v, dtype(names[k]))
    writer.close()
    with open(path, "rb") as f:
        plain = pickle.load(f)  # the standard library reads it as a dict of numpy arrays
    assert list(plain) == list(values)
    assert all(plain[k].dtype == v.dtype and np.array_equal(plain[k], v) for k, v in values.items())
    ours = read_pdparams(str(path))
    assert all(np.array_equal(ours[k].read(), v) for k, v in values.items())

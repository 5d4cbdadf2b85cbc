"""A safetensors header is checked as the safetensors library checks it: each tensor owns its bytes
(the data offsets, sorted, tile the data section exactly), and its byte count is dtype x shape.
Each malformed header is refused by the library too, by our reader in one line naming the file and
the tensor, and by every command that reads the file."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from helpers import cli
from safetensors import SafetensorError
from safetensors.numpy import load_file

from llama_ckpt import CheckpointError, open_source
from llama_ckpt.safetensors_io import read_header, read_tensor

DATA = np.arange(4, dtype=np.float32).tobytes()  # 16 bytes: room for two float32 [2] tensors


def _write(path, header: str, data: bytes = DATA) -> str:
    raw = header.encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return str(path)


def _f32(shape, begin, end, dtype="F32") -> str:
    return json.dumps({"dtype": dtype, "shape": shape, "data_offsets": [begin, end]})


def _header(**tensors: str) -> str:
    return "{" + ",".join(f'"{name}":{spec}' for name, spec in tensors.items()) + "}"


# (header, data, the end of the one line our reader gives after "FILE: ")
BAD = {
    # b's offsets point at a's bytes (the same length): two names, one tensor's bytes
    "same bytes": (
        _header(a=_f32([2], 0, 8), b=_f32([2], 0, 8)),
        DATA,
        "'b' starts at byte 0 of the data and overlaps 'a' (which ends at byte 8); "
        "each tensor must have bytes of its own, back to back",
    ),
    "partial overlap": (
        _header(a=_f32([2], 0, 8), b=_f32([2], 4, 12)),
        DATA[:12],
        "'b' starts at byte 4 of the data and overlaps 'a' (which ends at byte 8); "
        "each tensor must have bytes of its own, back to back",
    ),
    "gap": (
        _header(a=_f32([2], 0, 8), b=_f32([1], 12, 16)),
        DATA,
        "'b' starts at byte 12 of the data and leaves bytes 8-12 unclaimed after 'a'; "
        "each tensor must have bytes of its own, back to back",
    ),
    "gap at the start": (
        _header(a=_f32([2], 8, 16)),
        DATA,
        "'a' starts at byte 8 of the data and leaves bytes 0-8 unclaimed; "
        "each tensor must have bytes of its own, back to back",
    ),
    "end before begin": (
        _header(a=_f32([2], 0, 8), b=_f32([0], 16, 8)),
        DATA,
        "'b' has data_offsets [16, 8], which end before they begin",
    ),
    "count is not dtype x shape": (
        _header(a=_f32([2], 0, 8), b=_f32([3], 8, 16)),
        DATA,
        "'b' has 8 bytes, expected 12 (float32 [3])",
    ),
    "bytes no tensor claims": (
        _header(a=_f32([2], 0, 8)),
        DATA[:12],
        "4 bytes after the last tensor ('a') that no tensor claims",
    ),
    "float offset": (
        _header(a=_f32([2], 0, 8.0)),
        DATA[:8],
        "malformed header entry for 'a'",
    ),
    "negative offset": (
        _header(a=_f32([2], -8, 0)),
        DATA[:8],
        "malformed header entry for 'a'",
    ),
    "a name twice": (
        _header(a=_f32([2], 0, 8), b=_f32([2], 8, 16)).replace('"b"', '"a"'),
        DATA,
        "the header names 'a' twice",
    ),
    "runs past the end": (
        _header(a=_f32([2], 0, 8), b=_f32([2], 8, 16)),
        DATA[:12],
        "file is truncated ('b' runs past the end)",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_header_is_refused_as_the_library_refuses_it(tmp_path, case):
    header, data, message = BAD[case]
    path = _write(tmp_path / "x.safetensors", header, data)
    with pytest.raises(SafetensorError):  # the premise: the reference reader refuses it too
        load_file(path)
    with pytest.raises(CheckpointError) as info:
        read_header(path)
    assert str(info.value) == f"{path}: {message}"
    with pytest.raises(CheckpointError):
        open_source(path)


@pytest.mark.parametrize("command", ["inspect", "verify", "export"])
def test_commands_refuse_shared_bytes_in_one_line(tmp_path, command):
    header, data, message = BAD["same bytes"]
    path = _write(tmp_path / "x.safetensors", header, data)
    good = _write(tmp_path / "good.safetensors", _header(a=_f32([2], 0, 8), b=_f32([2], 8, 16)))
    args = {
        "inspect": [path],
        "verify": [good, path],
        "export": [path, tmp_path / "out"],
    }[command]
    r = cli(command, *args)
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"Error: {path}: {message}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.safetensors", "x.safetensors"]


def test_well_formed_headers_still_read(tmp_path):
    # zero-size tensors share an offset (nothing to share), as the library allows; dtypes mixed
    header = _header(
        e=_f32([0], 0, 0), z=_f32([0, 3], 0, 0), a=_f32([2], 0, 8), h=_f32([4], 8, 16, "F16")
    )
    path = _write(tmp_path / "x.safetensors", header)
    assert sorted(load_file(path)) == ["a", "e", "h", "z"]  # the library reads it too
    entries, metadata = read_header(path)
    assert metadata == {}
    got = {
        e.name: (e.dtype.name, e.shape, e.offset, read_tensor(path, e).tolist()) for e in entries
    }
    start = 8 + len(header) + (-len(header) % 8)
    halves = np.frombuffer(DATA[8:], np.float16).tolist()
    assert got == {
        "e": ("float32", (0,), start, []),
        "z": ("float32", (0, 3), start, []),
        "a": ("float32", (2,), start, [0.0, 1.0]),
        "h": ("float16", (4,), start + 8, halves),
    }

"""Bad input: one line on stderr, exit code 2, and nothing left under the output's name."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
from helpers import cli

pytestmark = pytest.mark.dist


@pytest.fixture
def ckpt(ckpt_mp4, tmp_path):
    dest = tmp_path / "ckpt"
    shutil.copytree(ckpt_mp4, dest)
    return dest


def _fails_cleanly(tmp_path, *args, message):
    out = tmp_path / "out"
    before = set(os.listdir(tmp_path))
    r = cli(*args[:-1], args[-1] if args[-1] != "OUT" else out)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.output
    assert set(os.listdir(tmp_path)) == before  # no output, no temporary left behind
    return lines[0]


def test_missing_distcp(ckpt, tmp_path):
    os.remove(ckpt / "2_0.distcp")
    _fails_cleanly(
        tmp_path, "merge", ckpt, str(tmp_path / "o.pdparams"), message="2_0.distcp is missing"
    )


@pytest.mark.parametrize("command", ["merge", "export"])
def test_truncated_distcp(ckpt, tmp_path, command):
    data = (ckpt / "1_0.distcp").read_bytes()
    (ckpt / "1_0.distcp").write_bytes(data[: len(data) // 2])
    out = "OUT" if command == "export" else str(tmp_path / "out.safetensors")
    line = _fails_cleanly(tmp_path, command, ckpt, out, message="1_0.distcp")
    assert "truncated" in line


def test_shard_shape_disagrees_with_metadata(ckpt, tmp_path):
    with open(ckpt / "3_0.distcp", "rb") as f:
        content = pickle.load(f)
    key = next(k for k in content if k.endswith("q_proj.weight"))
    content[key] = content[key][:, :-1].copy()
    with open(ckpt / "3_0.distcp", "wb") as f:
        pickle.dump(content, f, protocol=4)
    _fails_cleanly(
        tmp_path,
        "merge",
        ckpt,
        str(tmp_path / "o.pdparams"),
        message=f"{key} has shape (64, 15), the metadata says (64, 16)",
    )


def test_unknown_dtype(ckpt, tmp_path):
    raw = (ckpt / "0.metadata").read_bytes()
    assert b"\x8c\x07float32" in raw
    (ckpt / "0.metadata").write_bytes(raw.replace(b"\x8c\x07float32", b"\x8c\x07float33"))
    _fails_cleanly(
        tmp_path, "merge", ckpt, str(tmp_path / "o.pdparams"), message="unknown dtype 'float33'"
    )


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "some").mkdir()
    (tmp_path / "some" / "notes.txt").write_text("hello")
    _fails_cleanly(tmp_path, "export", tmp_path / "some", "OUT", message="is not a checkpoint")
    _fails_cleanly(
        tmp_path,
        "merge",
        tmp_path / "some",
        str(tmp_path / "o.pdparams"),
        message="not a Paddle distributed checkpoint",
    )


def test_existing_output_needs_overwrite(ckpt, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    _fails_cleanly(tmp_path, "export", ckpt, str(out), message="already exists (pass --overwrite")
    assert (out / "keep.txt").read_text() == "old"
    r = cli("export", ckpt, out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(out)) == [
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
    ]
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_and_runs_nothing(ckpt, tmp_path):
    marker = tmp_path / "pwned"
    with open(ckpt / "0_0.distcp", "wb") as f:
        pickle.dump({"model.x": _Exploit(marker)}, f, protocol=4)
    line = _fails_cleanly(
        tmp_path, "merge", ckpt, str(tmp_path / "o.pdparams"), message="refusing to load"
    )
    assert "posix.system" in line or "os.system" in line
    assert not marker.exists()
    with open(ckpt / "0_0.distcp", "wb") as f:  # an allowed callable fed something else
        pickle.dump({"model.x": (np.ndarray.__reduce__(np.zeros(2))[0], (dict, (0,), b"b"))}, f)
    assert cli("merge", ckpt, tmp_path / "o.pdparams").exit_code == 2

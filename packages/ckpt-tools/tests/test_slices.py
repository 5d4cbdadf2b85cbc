"""Partial reads (``read_slice``): the bytes of one shard, equal to slicing the whole tensor; and the
checks a model directory passes before anyone reads it (index, layout, run directories)."""

import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from llama_ckpt import Canonical, CheckpointError, digest, dtypes, open_source
from llama_ckpt.pdparams_io import PdparamsWriter
from llama_ckpt.runs import resolve_checkpoint
from llama_ckpt.slicing import read_along


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((12, 8), dtype=np.float32),
        "model.layers.0.mlp.down_proj.weight": rng.standard_normal((8, 20), dtype=np.float32),
        "model.norm.weight": rng.standard_normal(8, dtype=np.float32),
        "model.cube": rng.standard_normal((3, 6, 5), dtype=np.float32),
        "lm_head.weight": rng.standard_normal((30, 8), dtype=np.float32),
    }


def _cuts(shape):
    for axis, n in enumerate(shape):
        for start, stop in ((0, n), (0, n // 2), (n // 3, n - 1), (n - 1, n), (2, 2)):
            yield axis, start, stop


def test_slices_equal_the_whole_tensor_sliced(tmp_path):
    arrays = _arrays()
    save_file(arrays, str(tmp_path / "model.safetensors"))
    bf16 = {k: (v.view(np.uint32) >> 16).astype(np.uint16) for k, v in arrays.items()}
    writer = PdparamsWriter(str(tmp_path / "model.pdparams"))
    for name, bits in bf16.items():
        writer.write(name, bits, dtypes.dtype("bfloat16"))
    writer.close()
    for path, expected in (
        (tmp_path / "model.safetensors", arrays),
        (tmp_path / "model.pdparams", bf16),
    ):
        source = open_source(str(path))
        for name, whole in expected.items():
            for axis, start, stop in _cuts(whole.shape):
                part = source.read_slice(name, axis, start, stop)
                want = np.take(whole, range(start, stop), axis=axis)
                assert part.flags.c_contiguous and part.dtype == whole.dtype
                np.testing.assert_array_equal(part, want, err_msg=f"{path} {name} {axis}")
    with pytest.raises(CheckpointError, match="outside shape"):
        source.read_slice("model.norm.weight", 0, 4, 9)


def test_hf_layout_slices_come_transposed_and_read_only_their_bytes(tmp_path, monkeypatch):
    arrays = _arrays()
    save_file(arrays, str(tmp_path / "model.safetensors"))
    source = Canonical(open_source(str(tmp_path / "model.safetensors")))
    assert source.layout == "hf"
    read = []
    real = os.preadv
    monkeypatch.setattr(
        os, "preadv", lambda fd, bufs, off: read.append(len(bufs[0])) or real(fd, bufs, off)
    )
    # q_proj is [out=12, in=8] in hf: the paddle layout's column split is a row range, one read.
    part = source.read_slice("llama.layers.0.self_attn.q_proj.weight", 1, 4, 8)
    np.testing.assert_array_equal(part, arrays["model.layers.0.self_attn.q_proj.weight"][4:8].T)
    assert read == [4 * 8 * 4]
    # down_proj [out=8, in=20]: the paddle row split is a column range, one read per stored row.
    read.clear()
    part = source.read_slice("llama.layers.0.mlp.down_proj.weight", 0, 10, 20)
    np.testing.assert_array_equal(part, arrays["model.layers.0.mlp.down_proj.weight"][:, 10:20].T)
    assert read == [10 * 4] * 8


def test_truncated_file_is_named(tmp_path):
    arrays = _arrays()
    save_file(arrays, str(tmp_path / "a.safetensors"))
    entries = open_source(str(tmp_path / "a.safetensors")).entries
    _, last = max(entries.values(), key=lambda fe: fe[1].offset)
    with pytest.raises(CheckpointError, match="truncated"):
        read_along(
            str(tmp_path / "a.safetensors"),
            last.offset + 10**6,
            (4,),
            np.dtype(np.float32),
            0,
            0,
            4,
        )
    size = os.path.getsize(tmp_path / "a.safetensors")
    with open(tmp_path / "a.safetensors", "r+b") as fh:
        fh.truncate(size - 8)
    with pytest.raises(CheckpointError, match="truncated"):
        open_source(str(tmp_path / "a.safetensors"))


def _sharded(tmp_path, weight_map=None):
    arrays = _arrays()
    names = list(arrays)
    save_file({n: arrays[n] for n in names[:2]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({n: arrays[n] for n in names[2:]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    if weight_map is None:
        weight_map = {
            n: f"model-0000{1 + (i >= 2)}-of-00002.safetensors" for i, n in enumerate(names)
        }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return names


def test_index_checks(tmp_path):
    names = _sharded(tmp_path)
    source = open_source(str(tmp_path))
    assert sorted(source.names()) == sorted(names)
    first = digest(source)
    assert first == digest(open_source(str(tmp_path))) and len(first) == 64
    bad = {n: "model-00001-of-00002.safetensors" for n in names}
    _sharded(tmp_path, bad)
    with pytest.raises(CheckpointError, match=r"puts model\.norm\.weight in model-00001-of-00002"):
        open_source(str(tmp_path))
    _sharded(tmp_path, {**bad, names[0]: "../elsewhere.safetensors"})
    with pytest.raises(CheckpointError, match=r"names \.\./elsewhere\.safetensors, a file outside"):
        open_source(str(tmp_path))
    _sharded(tmp_path, {**bad, names[0]: "/etc/passwd"})
    with pytest.raises(CheckpointError, match="a file outside"):
        open_source(str(tmp_path))
    _sharded(tmp_path, {names[0]: "model-00003-of-00003.safetensors"})
    with pytest.raises(CheckpointError, match=r"model-00003-of-00003\.safetensors is missing"):
        open_source(str(tmp_path))


def test_layout_is_told_by_names_or_given(tmp_path):
    save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "odd.safetensors"))
    odd = open_source(str(tmp_path / "odd.safetensors"))
    assert Canonical(odd).layout == "paddle"  # the lenient default of export and verify
    with pytest.raises(CheckpointError, match="cannot tell the layout from the tensor names"):
        Canonical(odd, strict=True)
    assert Canonical(odd, layout="hf", strict=True).layout == "hf"
    with pytest.raises(CheckpointError, match="unknown layout"):
        Canonical(odd, layout="torch")


def test_run_directories_resolve_to_complete_checkpoints(tmp_path):
    step = tmp_path / "checkpoints" / "step-00000003"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoints" / "latest").write_text("step-00000003\n")
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        resolve_checkpoint(str(tmp_path))
    (step / "COMPLETE").write_text("3\n")
    assert resolve_checkpoint(str(tmp_path)) == str(step)
    assert resolve_checkpoint(str(tmp_path / "checkpoints")) == str(step)
    (tmp_path / "checkpoints" / "latest").write_text("../../etc\n")
    with pytest.raises(CheckpointError, match="names no checkpoint directory"):
        resolve_checkpoint(str(tmp_path))

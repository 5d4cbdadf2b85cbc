"""merge against Paddle's load_merged_state_dict on real 8-process and 4-process checkpoints."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tiny_model as T
from conftest import only_unique_id, paddle_reference
from helpers import cli, expected_unique_id0

pytestmark = pytest.mark.dist


def _pickled(path):
    with open(path, "rb") as f:
        return pickle.load(f)  # test-side independent reader (trusted file we just wrote)


@pytest.mark.parametrize("layout", ["3d", "mp4"])
def test_merge_is_bit_identical_to_paddle_load_merged(layout, ckpt_3d, ckpt_mp4, tmp_path):
    ckpt = ckpt_3d if layout == "3d" else ckpt_mp4
    out = tmp_path / "all.pdparams"
    r = cli("merge", ckpt, out, "--prefix", "", "--unique-id", "0")
    assert r.exit_code == 0, r.output
    one = only_unique_id(ckpt, 0, tmp_path / "uid0")
    dtypes = paddle_reference(one, tmp_path / "ref.npz", out)
    ref = np.load(tmp_path / "ref.npz")
    ref_keys = {k[4:] for k in ref.files if k.startswith("ref/")}
    ours_keys = {k[5:] for k in ref.files if k.startswith("ours/")}
    assert ours_keys == ref_keys
    assert dtypes["ours"] == dtypes["ref"]  # bf16 comes back as bf16 through paddle.load
    assert "bfloat16" in dtypes["ref"].values() and "int64" in dtypes["ref"].values()
    for k in ref_keys:
        assert ref[f"ours/{k}"].dtype == ref[f"ref/{k}"].dtype, k
        assert ref[f"ours/{k}"].tobytes() == ref[f"ref/{k}"].tobytes(), k


@pytest.mark.parametrize("layout", ["3d", "mp4"])
def test_merge_recovers_the_saved_values(layout, ckpt_3d, ckpt_mp4, tmp_path):
    ckpt = ckpt_3d if layout == "3d" else ckpt_mp4
    out = tmp_path / "all.pdparams"
    assert cli("merge", ckpt, out, "--prefix", "", "--unique-id", "0").exit_code == 0
    merged = _pickled(out)
    expected = expected_unique_id0()
    if layout == "3d":
        expected["optimizer.flat_state"] = (
            "float32",
            np.arange(64, dtype=np.float32).reshape(8, 8) / 7,
        )
    assert set(merged) == set(expected)
    for k, (_, want) in expected.items():
        assert merged[k].shape == want.shape and merged[k].tobytes() == want.tobytes(), k


def test_prefix_and_unique_id_select_what_is_merged(ckpt_3d, tmp_path):
    newest = tmp_path / "newest.pdparams"
    assert cli("merge", ckpt_3d, newest).exit_code == 0  # default: newest save, model. keys
    merged = _pickled(newest)
    doubled = T.model_values(2.0)
    assert set(merged) == set(doubled)
    assert all(merged[k].tobytes() == doubled[k].tobytes() for k in doubled)

    opt = tmp_path / "opt.pdparams"
    assert cli("merge", ckpt_3d, opt, "--prefix", "optimizer", "--unique-id", "0").exit_code == 0
    assert set(_pickled(opt)) == {*T.optimizer_values(), "flat_state"}


def test_safetensors_output_reads_with_the_safetensors_library(ckpt_mp4, tmp_path):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "extra.safetensors"
    assert cli("merge", ckpt_mp4, out, "--prefix", "extra").exit_code == 0
    got = load_file(out)
    for name, (value, dtype, _) in T.extra_values().items():
        want = (
            torch.from_numpy(value.astype(np.float32)).to(getattr(torch, dtype))
            if dtype == "bfloat16"
            else torch.from_numpy(value)
        )
        assert got[name].dtype == want.dtype and torch.equal(got[name], want), name


def test_reads_checkpoints_saved_as_safetensors(ckpt_mp4, tmp_path):
    out = tmp_path / "m.pdparams"
    r = cli("merge", f"{ckpt_mp4}-safetensors", out)
    assert r.exit_code == 0, r.output
    merged, want = _pickled(out), T.model_values()
    assert set(merged) == set(want) and all(merged[k].tobytes() == want[k].tobytes() for k in want)


def test_inspect_reports_layout_and_ranks(ckpt_3d):
    import json

    r = cli("inspect", ckpt_3d, "--unique-id", "0", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    rows = {t["name"]: t for t in info["tensors"]}
    assert info["unique_ids"] == [0, 1] and info["prefix"] == "model"
    assert info["other_key_groups"] == {
        "extra": len(T.extra_values()),
        "optimizer": len(T.optimizer_values()) + 1,
    }
    # mesh [pp, dp, mp] = arange(8).reshape(2, 2, 2): stage 0 is ranks 0-3, stage 1 is ranks 4-7
    q0, lm = rows["llama.layers.0.self_attn.q_proj.weight"], rows["lm_head.weight"]
    assert q0["grid"] == [1, 2] and set(q0["ranks"]) <= {0, 1, 2, 3}
    assert rows["llama.layers.1.mlp.down_proj.weight"]["grid"] == [2, 1]
    assert lm["grid"] == [1, 2] and set(lm["ranks"]) <= {4, 5, 6, 7}
    assert info["total_bytes"] == sum(v.nbytes for v in T.model_values().values())


def test_verify_compares_checkpoint_and_merged_file(ckpt_3d, tmp_path):
    out = tmp_path / "m.pdparams"
    assert cli("merge", ckpt_3d, out, "--unique-id", "0").exit_code == 0
    r = cli("verify", ckpt_3d, out, "--unique-id", "0")
    assert r.exit_code == 0 and f"equal: {len(T.params())} tensors" in r.output
    r = cli("verify", ckpt_3d, out)  # newest save holds doubled values
    assert r.exit_code == 1 and f"{len(T.params())} of {len(T.params())} tensors differ" in r.output

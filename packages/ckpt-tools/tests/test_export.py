"""export: model directories in both layouts, checked by transformers and the safetensors library."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tiny_model as T
from helpers import cli

pytestmark = pytest.mark.dist


def _hf_expected() -> dict[str, np.ndarray]:
    """Hugging Face names and [out, in] Linear weights, written out independently of llama_ckpt."""
    out = {}
    for name, value in T.model_values().items():
        hf = re.sub(r"^llama\.", "model.", name)
        out[hf] = value.T if (name.endswith("_proj.weight") or name == "lm_head.weight") else value
    return out


def test_hf_export_loads_into_transformers(ckpt_3d, tmp_path):
    import torch
    from transformers import LlamaForCausalLM

    out = tmp_path / "hf"
    r = cli("export", ckpt_3d, out, "--layout", "hf", "--unique-id", "0")
    assert r.exit_code == 0, r.output
    model = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32)
    state = model.state_dict()
    expected = _hf_expected()
    assert set(state) == set(expected)
    for name, want in expected.items():
        assert torch.equal(state[name], torch.from_numpy(np.ascontiguousarray(want))), name


def test_paddle_export_shards_by_bytes(ckpt_3d, tmp_path):
    from safetensors.numpy import load_file

    out = tmp_path / "pd"
    r = cli("export", ckpt_3d, out, "--unique-id", "0", "--max-shard-size", "100KB")
    assert r.exit_code == 0, r.output
    values = T.model_values()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in values.values())
    assert set(index["weight_map"]) == set(values)
    files = sorted(set(index["weight_map"].values()))
    assert len(files) == 4 and files[0] == "model-00001-of-00004.safetensors"
    seen = {}
    for f in files:
        data = load_file(out / f)
        size = sum(a.nbytes for a in data.values())
        # Hugging Face's rule: a shard never exceeds the limit unless it holds a single tensor
        assert size <= 100_000 or len(data) == 1
        seen.update(data)
        assert all(index["weight_map"][k] == f for k in data)
    assert all(seen[k].tobytes() == v.tobytes() for k, v in values.items())
    assert json.loads((out / "config.json").read_text())["hidden_size"] == T.CONFIG["hidden_size"]
    r = cli("verify", ckpt_3d, out, "--unique-id", "0")
    assert r.exit_code == 0, r.output


def test_export_split_num_and_bf16_cast(ckpt_mp4, tmp_path):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "bf16"
    r = cli("export", ckpt_mp4, out, "--layout", "hf", "--split-num", "3", "--dtype", "bfloat16")
    assert r.exit_code == 0, r.output
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    got = {}
    for f in files:
        got.update(load_file(out / f))
    for name, want in _hf_expected().items():
        ref = torch.from_numpy(np.ascontiguousarray(want)).to(torch.bfloat16)  # torch's rounding
        assert got[name].dtype == torch.bfloat16 and torch.equal(got[name], ref), name
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    # a bf16 copy equals the fp32 original within bf16's precision, and not bit for bit
    assert cli("verify", ckpt_mp4, out, "--rtol", "8e-3", "--atol", "1e-6").exit_code == 0
    assert cli("verify", ckpt_mp4, out).exit_code == 1


def test_export_from_merged_pdparams_round_trips(ckpt_mp4, tmp_path):
    merged = tmp_path / "m.pdparams"
    assert cli("merge", ckpt_mp4, merged).exit_code == 0
    (tmp_path / "config.json").write_text(json.dumps(T.CONFIG))
    hf = tmp_path / "hf"
    assert cli("export", merged, hf, "--layout", "hf").exit_code == 0
    back = tmp_path / "pd"
    assert cli("export", hf, back).exit_code == 0  # hf in, paddle layout out
    r = cli("verify", back, merged)
    assert r.exit_code == 0 and f"equal: {len(T.params())} tensors" in r.output

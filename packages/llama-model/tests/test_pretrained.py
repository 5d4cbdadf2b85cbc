"""``pretrained.PretrainedWeights``: a directory written by transformers fills the model bit for bit,
from float32 or bf16, tied or not, whole or read in shards (the dist path is in llama-train's
test_init_from.py, which runs it under dp/mp/pp)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import paddle  # noqa: E402

from llama_model import LlamaConfig, LlamaForCausalLM, LlamaModelError, preset  # noqa: E402
from llama_model.pretrained import PretrainedWeights, expected_shapes  # noqa: E402


def _save(path, tied: bool, dtype=torch.float32, shard="40KB"):
    cfg = preset("tiny", tie_word_embeddings=tied)
    torch.manual_seed(1)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg.to_dict()))
    hf.to(dtype).save_pretrained(path, safe_serialization=True, max_shard_size=shard)
    return {k: v.float().numpy() for k, v in hf.state_dict().items()}


@pytest.mark.parametrize(
    "tied, dtype", [(False, torch.float32), (True, torch.float32), (False, torch.bfloat16)]
)
def test_transformers_directory_fills_the_model_exactly(tmp_path, tied, dtype):
    hf_state = _save(tmp_path, tied, dtype)
    weights = PretrainedWeights.open(str(tmp_path))
    assert (weights.kind, weights.layout) == ("safetensors", "hf")
    config = weights.config()
    assert config == preset("tiny", tie_word_embeddings=tied)
    weights.check(config)
    with paddle.LazyGuard():
        model = LlamaForCausalLM(config)
    weights.fill(model)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    assert set(state) == set(expected_shapes(config))
    for name, value in state.items():
        hf_name = "model." + name[len("llama.") :] if name.startswith("llama.") else name
        want = hf_state[hf_name]
        want = (
            want.T
            if value.ndim == 2 and name.endswith(("_proj.weight", "lm_head.weight"))
            else want
        )
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, want, err_msg=name)
    record = weights.record()
    assert record["layout"] == "hf" and record["path"] == str(tmp_path)
    assert record["digest"] == PretrainedWeights.open(str(tmp_path)).record()["digest"]


def test_fill_needs_check_and_a_matching_config(tmp_path):
    _save(tmp_path, tied=False)
    weights = PretrainedWeights.open(str(tmp_path), layout="hf")
    with pytest.raises(LlamaModelError, match=r"check\(config\) must run before fill"):
        weights.fill(LlamaForCausalLM(preset("tiny")))
    other = LlamaConfig.from_dict({**preset("tiny").to_dict(), "num_key_value_heads": 4})
    with pytest.raises(
        LlamaModelError,
        match=r"k_proj.weight has shape \[32, 64\] but config.json implies \[64, 64\]",
    ):
        weights.check(other)
    # Read as the paddle layout, an hf directory's names fit nothing: every tensor is listed.
    with pytest.raises(LlamaModelError, match="is missing"):
        PretrainedWeights.open(str(tmp_path), layout="paddle").check(preset("tiny"))
    with pytest.raises(LlamaModelError, match="layout must be one of hf, paddle"):
        PretrainedWeights.open(str(tmp_path), layout="torch")

import json

import pytest

from llama_model import PRESETS, LlamaConfig, LlamaModelError, preset


def test_json_round_trip_keeps_fields_and_unknown_keys(tmp_path):
    cfg = LlamaConfig.from_dict({**PRESETS["llama3-8b"], "torch_dtype": "bfloat16"})
    cfg.to_json(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["torch_dtype"] == "bfloat16" and data["model_type"] == "llama"
    assert data["num_key_value_heads"] == 8 and data["rope_theta"] == 500000.0
    assert LlamaConfig.from_json(tmp_path) == cfg
    assert not any(p.name.endswith(".tmp") or ".tmp" in p.name for p in tmp_path.iterdir())


def test_reads_and_writes_transformers_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaConfig(
        vocab_size=1000, hidden_size=128, intermediate_size=344, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=2, rope_theta=250000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )  # fmt: skip
    hf.to_json_file(tmp_path / "config.json")
    cfg = LlamaConfig.from_json(tmp_path / "config.json")
    assert (cfg.hidden_size, cfg.num_key_value_heads, cfg.rope_theta) == (128, 2, 250000.0)
    assert cfg.tie_word_embeddings is True and cfg.head_dim == 16
    back = transformers.LlamaConfig(**cfg.to_dict())
    assert back.num_key_value_heads == 2 and back.intermediate_size == 344
    assert back.rope_parameters["rope_theta"] == 250000.0


def test_missing_kv_heads_means_multi_head():
    assert LlamaConfig(hidden_size=64, num_attention_heads=4).num_key_value_heads == 4


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_size": 100, "num_attention_heads": 3}, "must divide hidden_size"),
        ({"num_key_value_heads": 3}, "must divide num_attention_heads"),
        ({"vocab_size": 0}, "vocab_size must be a positive integer"),
        ({"rms_norm_eps": 0.0}, "rms_norm_eps"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "not supported"),
        ({"hidden_size": 60, "num_attention_heads": 4}, "head_dim (15) must be even"),
    ],
)
def test_invalid_configs_fail_with_one_line(changes, message):
    with pytest.raises(LlamaModelError) as err:
        preset("tiny", **changes)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_json_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(LlamaModelError, match="not valid JSON"):
        LlamaConfig.from_json(tmp_path)
    with pytest.raises(LlamaModelError, match="unknown preset"):
        preset("llama9")


@pytest.mark.parametrize(
    ("name", "published"),
    # parameter counts of the released checkpoints (sum of their tensors' sizes)
    [("llama2-7b", 6_738_415_616), ("llama2-13b", 13_015_864_320), ("llama3-8b", 8_030_261_248)],
)
def test_presets_have_the_published_parameter_counts(name, published):
    assert preset(name).num_parameters() == published

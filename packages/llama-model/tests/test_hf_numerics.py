"""Same weights, same tokens: logits and loss equal a Hugging Face transformers LlamaForCausalLM (torch)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import paddle  # noqa: E402

from llama_model import LlamaForCausalLM, preset, state_dict_to_hf  # noqa: E402
from llama_model.loss import IGNORE_INDEX, causal_lm_loss  # noqa: E402


def _hf_model(cfg):
    hf_cfg = transformers.LlamaConfig(**cfg.to_dict())
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(hf_cfg).float().eval()


def _compare(cfg, seq=24, batch=3):
    model = LlamaForCausalLM(cfg)
    model.init_weights(seed=3)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    hf = _hf_model(cfg)
    missing, unexpected = hf.load_state_dict(
        {k: torch.from_numpy(v) for k, v in state_dict_to_hf(state).items()}, strict=False
    )
    # With tied embeddings transformers has no separate lm_head parameter to fill.
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}

    rng = np.random.default_rng(7)
    ids = rng.integers(0, cfg.vocab_size, size=(batch, seq + 1))
    hf_labels = ids[:, :-1].copy()
    hf_labels[0, 5:9] = IGNORE_INDEX  # some positions ignored, as padding would be
    inputs = ids[:, :-1]
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(inputs), labels=torch.from_numpy(hf_labels))
    # transformers shifts labels inside; ours are given already shifted, padded with ignore at the end.
    labels = np.concatenate([hf_labels[:, 1:], np.full((batch, 1), IGNORE_INDEX)], axis=1)
    logits = model(paddle.to_tensor(inputs))
    loss = causal_lm_loss(logits, paddle.to_tensor(labels))
    ref_logits = out.logits.numpy()
    np.testing.assert_allclose(
        logits.numpy(), ref_logits, rtol=1e-4, atol=1e-4 * np.abs(ref_logits).max()
    )
    assert abs(float(loss) - float(out.loss)) <= 1e-4 * abs(float(out.loss))


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_logits_and_loss_match_transformers(kv_heads, tied):
    _compare(
        preset(
            "tiny", num_key_value_heads=kv_heads, tie_word_embeddings=tied, initializer_range=0.2
        )
    )


def test_llama3_rope_scaling_matches_transformers():
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }
    _compare(
        preset("tiny", rope_theta=500000.0, rope_scaling=scaling, initializer_range=0.2),
        seq=100,
        batch=1,
    )

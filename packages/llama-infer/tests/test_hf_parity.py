"""Greedy token ids identical to transformers' generate on the same weights (its hf-layout export)."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import padded_prompts

from llama_infer import Generator

NEW_TOKENS = 24


def hf_greedy(hf_dir: str, prompts: list[list[int]]) -> list[list[int]]:
    model = transformers.LlamaForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
    model.eval()
    width = max(map(len, prompts))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding, as for decoder-only generation
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
            do_sample=False, pad_token_id=0, eos_token_id=None,
        )  # fmt: skip
    return out[:, width:].tolist()


@pytest.mark.parametrize("name", ["mha", "gqa"])
@pytest.mark.parametrize("lengths", [(7,), (5, 11, 8)], ids=["batch1", "padded-batch"])
def test_greedy_matches_transformers(model_dirs, name, lengths):
    _, paddle_dir, hf_dir = model_dirs[name]
    prompts = padded_prompts(len(lengths), lengths)
    expected = hf_greedy(hf_dir, prompts)
    torch_cfg = transformers.AutoConfig.from_pretrained(hf_dir)
    assert torch_cfg.num_key_value_heads == (2 if name == "gqa" else 4)
    for directory in (paddle_dir, hf_dir):  # both layouts of the same weights
        gen = Generator(directory)
        got = gen.generate_ids(prompts, max_new_tokens=NEW_TOKENS, eos_token_ids=())
        assert [c.token_ids for c in got] == expected
    # The generations are not degenerate (a repeated single token would prove little).
    assert all(len(set(row)) > 3 for row in expected)

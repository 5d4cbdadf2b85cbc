"""End to end: train a tiny model on a passage until it knows it, save it as the trainer does
(a Paddle distributed checkpoint with ``model.`` keys, config.json, a ``latest`` pointer), then run
``llama-infer`` on the run directory and get the passage's continuation back."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from conftest import tiny_config
from test_loading_and_cli import cli

from llama_infer import Generator
from llama_model import LlamaForCausalLM, causal_lm_loss

PASSAGE = (
    "Shall I compare thee to a summer's day?\n"
    "Thou art more lovely and more temperate:\n"
    "Rough winds do shake the darling buds of May,\n"
    "And summer's lease hath all too short a date;\n"
)


def train_on_passage(steps: int = 150) -> LlamaForCausalLM:
    paddle.seed(0)
    config = tiny_config(vocab_size=260, eos_token_id=257, bos_token_id=256, max_position_embeddings=256,
                         initializer_range=0.02)  # fmt: skip
    model = LlamaForCausalLM(config)
    model.init_weights(0)
    data = np.frombuffer(PASSAGE.encode(), np.uint8).astype(np.int64)  # the byte tokenizer's ids
    opt = paddle.optimizer.AdamW(3e-3, parameters=model.parameters(), weight_decay=0.0)
    ids = paddle.to_tensor(data[None, :-1])
    labels = paddle.to_tensor(data[None, 1:])
    model.train()
    for _ in range(steps):
        loss = causal_lm_loss(model(ids), labels)
        loss.backward()
        opt.step()
        opt.clear_grad()
    model.eval()
    return model, float(loss)


@pytest.mark.e2e
def test_trained_model_recites_its_passage(tmp_path):
    model, loss = train_on_passage()
    assert loss < 0.1, f"the tiny model did not learn the passage (loss {loss:.3f})"
    step = tmp_path / "run" / "checkpoints" / "step-00000150"
    step.mkdir(parents=True)
    paddle.distributed.save_state_dict(
        {f"model.{k}": v for k, v in model.state_dict().items()}, str(step)
    )
    model.config.to_json(str(step))
    (step / "COMPLETE").write_text("")
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-00000150\n")

    # Prompts are openings of the passage: trained on it whole, the model knows it from its start.
    prompt = PASSAGE[:45]
    expected = PASSAGE[45:85]
    result = cli("--model", str(tmp_path / "run"), "--tokenizer", "byte", "--prompt", prompt,
                 "--max-new-tokens", "40")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
    # Batched, with sampling at a low temperature, the passage still comes back.
    gen = Generator(str(tmp_path / "run"), "byte")
    prompts = [PASSAGE[:10], PASSAGE[:100], PASSAGE[:60]]
    outs = gen.generate(
        prompts, max_new_tokens=15, decode_strategy="sampling", temperature=0.1, seed=3
    )
    for p, c in zip(prompts, outs):
        assert c.text == PASSAGE[len(p) : len(p) + 15]

"""KV-cache decoding gives the logits of a full recomputation (the model's own forward) at every step."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from conftest import padded_prompts, random_model, tiny_config

from llama_infer import CachedDecoder


def full_logits(model, ids: list[int]) -> np.ndarray:
    with paddle.no_grad():
        return model(paddle.to_tensor([ids], dtype="int64")).numpy()[0, -1]


@pytest.mark.parametrize(
    "kv_heads, lengths",
    [(4, (3, 9, 6)), (2, (3, 9, 6)), (1, (3, 9, 6)), (2, (7, 7, 7))],
    ids=["mha", "gqa", "mqa", "gqa-unpadded"],  # unpadded: the prefill's causal path, no mask
)
def test_cached_logits_equal_recomputation(kv_heads, lengths):
    model = random_model(tiny_config(num_key_value_heads=kv_heads), seed=kv_heads)
    prompts = padded_prompts(kv_heads, lengths)
    width = max(map(len, prompts))
    pads = np.array([width - len(p) for p in prompts])
    batch = np.zeros((len(prompts), width), np.int64)
    for i, p in enumerate(prompts):
        batch[i, pads[i] :] = p
    decoder = CachedDecoder(model)
    steps = 10
    state, logits = decoder.prefill(batch, pads, width + steps)
    rng = np.random.default_rng(0)
    sequences = [list(p) for p in prompts]
    for _ in range(steps):
        for i, seq in enumerate(sequences):  # each row alone, unpadded, recomputed from scratch
            np.testing.assert_allclose(logits[i], full_logits(model, seq), rtol=1e-4, atol=1e-4)
        tokens = rng.integers(0, 256, len(prompts))  # any continuation, not only the argmax
        for seq, t in zip(sequences, tokens):
            seq.append(int(t))
        logits = decoder.step(state, tokens)
    assert state.next_slot == width + steps  # every slot of the cache used


def test_prefill_makes_the_cache_and_steps_write_it_in_place():
    model = random_model(tiny_config(num_key_value_heads=2), seed=3)
    decoder = CachedDecoder(model)
    state, logits = decoder.prefill(np.array([[5, 6, 7]]), np.array([0]), 8)
    buffers = [k.data_ptr() for k in state.keys]
    assert tuple(state.keys[0].shape) == (1, 2, 8, 16)
    # the step's mask has the scores' shape [b, kv_heads, group, capacity]: no broadcasting add
    assert tuple(state.mask.shape) == (1, 2, 2, 8)
    np.testing.assert_array_equal(state.mask.numpy()[0, :, :, :3], 0)  # the prompt's slots
    assert (state.mask.numpy()[0, :, :, 3:] < -1e30).all()  # slots not yet written
    decoder.step(state, logits.argmax(-1))
    assert [k.data_ptr() for k in state.keys] == buffers  # same storage: no concatenation
    assert float(paddle.abs(state.keys[0][:, :, 3]).sum()) > 0  # slot 3 now holds the new key
    assert float(paddle.abs(state.keys[0][:, :, 4:]).sum()) == 0
    np.testing.assert_array_equal(state.mask.numpy()[0, :, :, :4], 0)  # slot 3 opened by the step

"""Logits processors against transformers' own (same definitions, same order); sampling statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llama_infer import InferError, SamplingConfig, next_tokens, processed_logits


def hf_processed(logits, history, penalty, temperature, top_k, top_p):
    scores = torch.tensor(logits)
    ids = torch.tensor(history)
    for proc in (
        RepetitionPenaltyLogitsProcessor(penalty) if penalty != 1.0 else None,
        TemperatureLogitsWarper(temperature) if temperature != 1.0 else None,
        TopKLogitsWarper(top_k) if top_k else None,
        TopPLogitsWarper(top_p) if top_p < 1.0 else None,
    ):
        if proc is not None:
            scores = proc(ids, scores)
    return scores.numpy()


@pytest.mark.parametrize(
    "penalty,temperature,top_k,top_p",
    [
        (1.3, 0.7, 0, 1.0),
        (1.0, 1.0, 7, 1.0),
        (1.0, 1.5, 0, 0.8),
        (1.2, 0.9, 20, 0.9),
        (1.0, 1.0, 3, 0.5),
    ],
)
def test_processors_match_transformers(penalty, temperature, top_k, top_p):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((3, 50)) * 3).astype(np.float32)
    logits[0, 5] = logits[0, 6]  # a tie, kept by both top-k definitions
    history = rng.integers(0, 50, (3, 12))
    seen = np.zeros((3, 50), bool)
    for i, row in enumerate(history):
        seen[i, row] = True
    cfg = SamplingConfig("sampling", temperature, top_k, top_p, penalty)
    ours = processed_logits(logits, seen, cfg)
    theirs = hf_processed(logits, history, penalty, temperature, top_k, top_p)
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-6)


def test_sampling_frequencies_follow_the_distribution():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    cfg = SamplingConfig("sampling")
    rng = np.random.default_rng(1)
    draws = np.array([next_tokens(logits, None, cfg, rng)[0] for _ in range(4000)])
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    # top-p 0.7 keeps the two tokens whose mass reaches 0.8, renormalised to 5/8 and 3/8
    rng = np.random.default_rng(2)
    cfg = SamplingConfig("sampling", top_p=0.7)
    draws = np.array([next_tokens(logits, None, cfg, rng)[0] for _ in range(4000)])
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, [0.625, 0.375, 0, 0], atol=0.03)


def test_same_seed_same_draws_and_greedy_is_argmax():
    logits = np.random.default_rng(3).standard_normal((4, 30)).astype(np.float32)
    cfg = SamplingConfig("sampling", temperature=1.3)
    a = next_tokens(logits, None, cfg, np.random.default_rng(7))
    b = next_tokens(logits, None, cfg, np.random.default_rng(7))
    assert a.tolist() == b.tolist()
    greedy = next_tokens(logits, None, SamplingConfig(), np.random.default_rng(0))
    assert greedy.tolist() == logits.argmax(-1).tolist()


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": 0}, {"top_k": -1}, {"top_p": 0}, {"top_p": 1.5}, {"strategy": "beam"}],
)
def test_bad_sampling_options(kwargs):
    with pytest.raises(InferError):
        SamplingConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": float("inf")}, "temperature must be a finite number > 0, got inf"),
        ({"temperature": float("nan")}, "temperature must be a finite number > 0, got nan"),
        (
            {"repetition_penalty": float("inf")},
            "repetition_penalty must be a finite number > 0, got inf",
        ),
        ({"top_p": float("nan")}, "top_p must be in (0, 1], got nan"),
    ],
)
def test_non_finite_sampling_options(kwargs, message):
    # An infinite temperature or penalty turns the logits into zeros and infinities.
    with pytest.raises(InferError) as info:
        SamplingConfig("sampling", **kwargs)
    assert str(info.value) == message

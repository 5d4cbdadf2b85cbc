"""Choosing the next token from logits: greedy, or sampling after Hugging Face's processors.

The processors follow ``transformers``' definitions and order (``generate`` applies the repetition
penalty with the other logits processors first, then the temperature, top-k and top-p warpers):

1. repetition penalty ``r``: for every token already in the row (prompt and generated), a positive
   logit is divided by ``r``, a negative one multiplied by ``r``;
2. temperature ``T``: logits / T;
3. top-k: logits below the k-th largest are removed (ties with it are kept);
4. top-p: sorted ascending, tokens whose cumulative probability is <= 1 - p are removed, the most
   likely token always stays;

then one token is drawn from the softmax of what remains. Greedy takes the argmax of the
penalized logits (temperature and the filters cannot change it). Work is on numpy ``[batch, vocab]``
float32 arrays: the logits come to the host every step anyway, to stream and to stop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from llama_infer.errors import InferError

STRATEGIES = ("greedy", "sampling")


@dataclass(frozen=True)
class SamplingConfig:
    strategy: str = "greedy"
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InferError(
                f"decode strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InferError(f"temperature must be a finite number > 0, got {self.temperature}")
        if self.top_k < 0:
            raise InferError(f"top_k must be >= 0 (0 turns it off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InferError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise InferError(
                f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty}"
            )


def repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """``seen`` [batch, vocab] bool: tokens present in each row so far."""
    penalized = np.where(logits < 0, logits * np.float32(penalty), logits / np.float32(penalty))
    return np.where(seen, penalized, logits).astype(np.float32)


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[-1])
    kth = np.partition(logits, -k, axis=-1)[:, -k, None]
    return np.where(logits < kth, -np.inf, logits).astype(np.float32)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    order = np.argsort(logits, axis=-1, kind="stable")  # ascending
    ordered = np.take_along_axis(logits, order, axis=-1)
    cumulative = np.cumsum(softmax(ordered), axis=-1)
    remove = cumulative <= 1 - p
    remove[:, -1] = False  # the most likely token is always kept
    out = logits.copy()
    np.put_along_axis(out, order, np.where(remove, -np.inf, ordered), axis=-1)
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def processed_logits(
    logits: np.ndarray, seen: np.ndarray | None, cfg: SamplingConfig
) -> np.ndarray:
    """The logits after the processors of ``cfg``, in Hugging Face's order."""
    if cfg.repetition_penalty != 1.0 and seen is not None:
        logits = repetition_penalty(logits, seen, cfg.repetition_penalty)
    if cfg.strategy == "greedy":
        return logits
    if cfg.temperature != 1.0:
        logits = (logits / np.float32(cfg.temperature)).astype(np.float32)
    if cfg.top_k:
        logits = top_k_filter(logits, cfg.top_k)
    if cfg.top_p < 1.0:
        logits = top_p_filter(logits, cfg.top_p)
    return logits


def next_tokens(
    logits: np.ndarray, seen: np.ndarray | None, cfg: SamplingConfig, rng: np.random.Generator
) -> np.ndarray:
    """One token per row [batch] int64."""
    logits = processed_logits(logits, seen, cfg)
    if cfg.strategy == "greedy":
        return logits.argmax(axis=-1).astype(np.int64)
    probs = softmax(logits.astype(np.float64))
    cumulative = np.cumsum(probs, axis=-1)
    draws = rng.random(len(probs)) * cumulative[:, -1]
    picked = (cumulative > draws[:, None]).argmax(axis=-1)
    return picked.astype(np.int64)

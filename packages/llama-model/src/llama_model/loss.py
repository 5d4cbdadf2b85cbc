"""Causal-LM loss normalised by the number of valid tokens of the whole global batch.

The loss of a step is  Σ_{micro-batches, dp shards} Σ_{tokens with label ≠ ignore_index} CE  /  N_valid,
where N_valid counts the non-ignored labels of the global batch, known before the step starts. Each
micro-batch therefore contributes ``token_loss_sum(mb) / N_valid``, and the contributions simply add up:
no averaging of averages (which would weight a short micro-batch like a full one), no division by the
number of micro-batches (the pipeline schedules do not divide either), and a token whose loss happens
to be zero still counts in N_valid (unlike ``loss[loss != 0].mean()`` of some upstream trainers).

Labels are already shifted (label[t] is the token after input[t]). ``IGNORE_INDEX`` is -100, as in
Hugging Face and PaddleNLP.
"""

from __future__ import annotations

import numpy as np

from llama_model._paddle import paddle

IGNORE_INDEX = -100


def count_valid_tokens(labels, ignore_index: int = IGNORE_INDEX) -> int:
    """Number of labels that take part in the loss (numpy array or Paddle tensor)."""
    if not isinstance(labels, np.ndarray):
        labels = labels.numpy()
    return int((labels != ignore_index).sum())


def token_loss_sum(logits, labels, ignore_index: int = IGNORE_INDEX):
    """Σ cross-entropy over the non-ignored tokens; logits [b, s, v] (any float dtype), labels [b, s]."""
    if logits.dtype != paddle.float32:
        logits = logits.astype("float32")
    losses = paddle.nn.functional.cross_entropy(
        logits,
        labels.unsqueeze(-1),
        ignore_index=ignore_index,
        reduction="none",
    )
    return losses.sum()


def causal_lm_loss(logits, labels, ignore_index: int = IGNORE_INDEX):
    """Mean token loss of one batch (the single-batch case of the rule above)."""
    n_valid = count_valid_tokens(labels, ignore_index)
    return token_loss_sum(logits, labels, ignore_index) / max(n_valid, 1)


class ScaledTokenLoss:
    """The loss_fn handed to a pipeline schedule: each micro-batch's token-loss sum over the global
    valid-token count. ``set_num_valid_tokens`` is called once per step, before the schedule runs."""

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        self.ignore_index = ignore_index
        self.scale = 1.0

    def set_num_valid_tokens(self, n_valid: int) -> None:
        self.scale = 1.0 / max(int(n_valid), 1)

    def __call__(self, logits, labels):
        return token_loss_sum(logits, labels, self.ignore_index) * self.scale

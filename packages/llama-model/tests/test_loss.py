import numpy as np
import paddle

from llama_model import IGNORE_INDEX, causal_lm_loss, count_valid_tokens, token_loss_sum
from llama_model.loss import ScaledTokenLoss


def _numpy_token_losses(logits, labels):
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    safe = np.where(labels == IGNORE_INDEX, 0, labels)
    per_token = -np.take_along_axis(logp, safe[..., None], -1)[..., 0]
    return np.where(labels == IGNORE_INDEX, 0.0, per_token)


def _data(seed=0, b=4, s=6, v=11):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((b, s, v)).astype(np.float32) * 3
    labels = rng.integers(0, v, (b, s))
    labels[0, 3:] = IGNORE_INDEX
    labels[2, :5] = IGNORE_INDEX
    return logits, labels


def test_token_loss_sum_and_mean_against_numpy():
    logits, labels = _data()
    want = _numpy_token_losses(logits.astype(np.float64), labels)
    got_sum = float(token_loss_sum(paddle.to_tensor(logits), paddle.to_tensor(labels)))
    assert abs(got_sum - want.sum()) < 1e-4
    got_mean = float(causal_lm_loss(paddle.to_tensor(logits), paddle.to_tensor(labels)))
    assert count_valid_tokens(labels) == 4 * 6 - 3 - 5
    assert abs(got_mean - want.sum() / 16) < 1e-5


def test_zero_loss_tokens_still_count():
    logits, labels = _data()
    logits[1, 0, :] = -1e4  # a token the model predicts perfectly: its loss is exactly 0
    logits[1, 0, labels[1, 0]] = 1e4
    want = _numpy_token_losses(logits.astype(np.float64), labels)
    assert want[1, 0] == 0.0
    got = float(causal_lm_loss(paddle.to_tensor(logits), paddle.to_tensor(labels)))
    assert abs(got - want.sum() / 16) < 1e-5  # 16 valid tokens, the zero-loss one included
    assert abs(got - want[want != 0].mean()) > 1e-3  # what dropping zero-loss tokens would give


def test_micro_batch_losses_add_up_to_the_global_mean():
    logits, labels = _data(seed=3, b=8)
    want = _numpy_token_losses(logits.astype(np.float64), labels).sum() / count_valid_tokens(labels)
    loss_fn = ScaledTokenLoss()
    loss_fn.set_num_valid_tokens(count_valid_tokens(labels))
    parts = [
        float(loss_fn(paddle.to_tensor(lg), paddle.to_tensor(lb)))
        for lg, lb in zip(np.split(logits, 4), np.split(labels, 4))
    ]
    assert abs(sum(parts) - want) < 1e-5
    # the average of per-micro-batch means differs when micro-batches hold different token counts
    means = [
        float(causal_lm_loss(paddle.to_tensor(lg), paddle.to_tensor(lb)))
        for lg, lb in zip(np.split(logits, 4), np.split(labels, 4))
    ]
    assert abs(np.mean(means) - want) > 1e-3

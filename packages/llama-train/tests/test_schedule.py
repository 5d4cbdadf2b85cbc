import math

import pytest

from llama_train import LRSchedule


def reference(step, lr, min_lr, warmup, end, style):
    # Written from the schedule's definition: warmup on updates 1..warmup, decay over (warmup, end].
    if step <= warmup:
        return lr * step / warmup
    if style == "constant":
        return lr
    if step >= end:
        return min_lr
    progress = (step - warmup) / (end - warmup)
    if style == "linear":
        return lr - (lr - min_lr) * progress
    return min_lr + (lr - min_lr) * (math.cos(math.pi * progress) + 1) / 2


@pytest.mark.parametrize("style", ["linear", "cosine", "constant"])
def test_schedule_matches_definition(style):
    s = LRSchedule(1e-3, 1e-4, warmup=10, decay_end=100, style=style)
    for step in range(1, 130):
        assert s(step) == pytest.approx(reference(step, 1e-3, 1e-4, 10, 100, style), rel=1e-12)


def test_schedule_landmarks():
    s = LRSchedule(1e-3, 1e-4, warmup=10, decay_end=110, style="cosine")
    assert s(1) == pytest.approx(1e-4)  # first update is not at lr 0
    assert s(10) == pytest.approx(1e-3)
    assert s(60) == pytest.approx(5.5e-4)  # half way: the mean of max and min
    assert s(110) == pytest.approx(1e-4)
    assert s(500) == pytest.approx(1e-4)
    lin = LRSchedule(2e-3, 0.0, warmup=0, decay_end=4, style="linear")
    assert [lin(k) for k in range(1, 5)] == pytest.approx([1.5e-3, 1e-3, 5e-4, 0.0])

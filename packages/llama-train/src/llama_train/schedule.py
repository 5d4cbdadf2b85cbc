"""The learning-rate schedule: linear warmup, then linear or cosine decay to a minimum.

Steps count optimizer updates from 1. Update ``k`` uses

* ``lr · k / warmup`` for ``k ≤ warmup`` (so the first update is not wasted at lr 0),
* ``min_lr + (lr − min_lr) · f(r)`` with ``r = (k − warmup) / (decay_end − warmup)`` up to
  ``decay_end``: ``f(r) = 1 − r`` (linear), ``(1 + cos πr) / 2`` (cosine), ``1`` (constant),
* ``min_lr`` after ``decay_end``.

The value is a pure function of the step, so a resumed run follows the schedule exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    lr: float
    min_lr: float
    warmup: int
    decay_end: int
    style: str = "linear"

    def __call__(self, step: int) -> float:
        if step <= self.warmup:
            return self.lr * step / self.warmup
        if self.style == "constant":
            return self.lr
        if step >= self.decay_end:
            return self.min_lr
        ratio = (step - self.warmup) / (self.decay_end - self.warmup)
        factor = 1.0 - ratio if self.style == "linear" else 0.5 * (1.0 + math.cos(math.pi * ratio))
        return self.min_lr + (self.lr - self.min_lr) * factor

    @classmethod
    def of_run(cls, run) -> LRSchedule:
        """The schedule of a ``RunRecord``: its options, with warmup and decay end resolved."""
        opts = run.options
        return cls(opts.optimizer.lr, opts.schedule.min_lr, run.warmup, run.decay_end,
                   opts.schedule.decay_style)  # fmt: skip

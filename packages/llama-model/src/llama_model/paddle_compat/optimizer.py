"""An optimizer's state: its accumulators (AdamW's moments and beta powers) per parameter, which
llama-train names, saves and reshards itself. Verified for Paddle 3.3."""

from __future__ import annotations

VERIFIED_FOR = ("3.3",)


def inner(optimizer):
    """The optimizer inside ``dist.shard_optimizer``'s wrapper (or the optimizer itself)."""
    return optimizer.__dict__.get("_inner_opt", optimizer)


def accumulators(optimizer) -> dict:
    """``{accumulator name: {parameter name: tensor}}``: the optimizer's live state (empty before
    its first step); of the inner optimizer when ``optimizer`` is a sharded wrapper."""
    return inner(optimizer)._accumulators

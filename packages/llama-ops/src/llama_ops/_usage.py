"""Which path each operator took, counted per call: what a run reports as the kernels it used, and
what tests assert (a counter, not a log line).

Paths: ``fused`` (the compiled kernel on whole tensors), ``local`` (the compiled kernel on each
rank's shard of dist tensors) and ``fallback`` (the pure-Paddle twin), with the first reason a
fallback was taken. Inside ``paddle.jit.to_static`` a count is one traced call, not one execution.
"""

from __future__ import annotations

import logging
from collections import Counter

PATHS = ("fused", "local", "fallback")
OPS = ("rms_norm", "apply_rope", "swiglu", "causal_softmax")

log = logging.getLogger("llama_ops")
_counts: Counter = Counter()
_reasons: dict[str, str] = {}


def count(op: str, path: str) -> None:
    _counts[op, path] += 1


def note_fallback(op: str, reason: str) -> None:
    """Count a fallback call; the first reason per operator is kept (``summary()`` reports it) and
    logged once at debug level (Paddle puts a handler on the root logger, so info would reach the
    console of every tool that imports it)."""
    _counts[op, "fallback"] += 1
    if op not in _reasons:
        _reasons[op] = reason
        log.debug("llama_ops.%s uses the fallback (%s)", op, reason)


def usage() -> dict[str, dict[str, int]]:
    """Calls per operator and path since the last ``reset_usage()``:
    ``{"rms_norm": {"fused": 0, "local": 12, "fallback": 0}, ...}``."""
    return {op: {path: _counts[op, path] for path in PATHS} for op in OPS}


def fallback_reasons() -> dict[str, str]:
    """The first reason each operator took the fallback for, since the last ``reset_usage()``."""
    return dict(_reasons)


def reset_usage() -> None:
    _counts.clear()
    _reasons.clear()


def summary() -> str:
    """One line naming the path each operator took, e.g. ``rms_norm fused (local shards), apply_rope
    fused, swiglu fused, causal_softmax fallback (causal_softmax has CPU kernels only)``; an operator
    that took several paths lists each, and one never called says so."""
    parts = []
    for op in OPS:
        taken = []
        if _counts[op, "fused"]:
            taken.append("fused")
        if _counts[op, "local"]:
            taken.append("fused (local shards)")
        if _counts[op, "fallback"]:
            taken.append(f"fallback ({_reasons.get(op, '?')})")
        parts.append(f"{op} {' + '.join(taken) if taken else 'not called'}")
    return ", ".join(parts)

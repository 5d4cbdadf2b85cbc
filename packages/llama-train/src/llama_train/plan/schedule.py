"""How many micro-batches' activations a pipeline rank holds at once, as Paddle 3.3.1's schedules
order the work (``paddle.distributed.auto_parallel.pipelining.schedules``):

* no pipeline (pp 1): the micro-batches run one after the other (forward, backward): one;
* FThenB: every forward before any backward: all m;
* 1F1B (``Schedule1F1B``): stage r runs min(m, pp − r) forwards, then one backward before each
  further forward: min(m, pp − r);
* VPP (``ScheduleVPP``, interleaved, v chunks per rank): rank r runs
  w = min((v − 1)·m_r + 2·(pp − 1 − r), m·v) forwards first (m_r: micro-batches per round,
  m / max(1, m / pp)), then pairs of one forward and one backward, then the remaining backwards;
  which chunk each step serves follows the schedule's own rule (a round of m_r micro-batches per
  chunk). Chunks differ (the first holds the embedding, the last the head), so the peak is found
  by running that order: the largest sum of the bytes of the chunk-micro-batches alive at once.
"""

from __future__ import annotations

from collections import Counter

from llama_model import Strategy


def peak_in_flight(
    strategy: Strategy, stage: int, chunk_bytes: dict[int, int]
) -> tuple[int, Counter]:
    """(the largest activation bytes alive at once on a rank of ``stage``, the chunk-micro-batches
    alive then: chunk → count). ``chunk_bytes``: one micro-batch's bytes per chunk of the stage."""
    m, pp = strategy.micro_batches, strategy.pp
    if strategy.schedule != "VPP" or pp == 1:
        (chunk,) = chunk_bytes
        if pp == 1:
            alive = 1
        elif strategy.schedule == "FThenB":
            alive = m
        else:
            alive = min(m, pp - stage)
        return alive * chunk_bytes[chunk], Counter({chunk: alive})
    return _vpp_peak(strategy, stage, chunk_bytes)


def _vpp_peak(strategy: Strategy, rank: int, chunk_bytes: dict[int, int]) -> tuple[int, Counter]:
    m, pp, v = strategy.micro_batches, strategy.pp, strategy.virtual_pp_degree
    per_round = m // max(1, m // pp)
    warmup = min((v - 1) * per_round + 2 * (pp - 1 - rank), m * v)
    ops = m * v

    def forward_chunk(op: int) -> int:
        return (op // per_round) % v * pp + rank

    def backward_chunk(op: int) -> int:
        return (v - 1 - ((op - warmup) // per_round) % v) * pp + rank

    order: list[tuple[int, int]] = []  # (+1 forward / -1 backward, chunk)
    for op in range(ops):
        if op < warmup:
            order.append((1, forward_chunk(op)))
        else:
            order += [(1, forward_chunk(op)), (-1, backward_chunk(op))]
    order += [(-1, backward_chunk(op)) for op in range(ops, ops + warmup)]
    alive: Counter = Counter()
    peak, at_peak = 0, Counter()
    for sign, chunk in order:
        alive[chunk] += sign
        held = sum(chunk_bytes[c] * n for c, n in alive.items())
        if held > peak:
            peak, at_peak = held, Counter(+alive)
    return peak, at_peak

"""How much memory a rank holds: its peak so far, and what its parameters and optimizer state take.

The peak is the device allocator's on a GPU build (``max_memory_allocated``, and ``reserved``: what
the caching allocator holds), and the process's peak resident set on CPU (``ru_maxrss``, which
includes Paddle itself). Logged records carry the largest peak over the ranks and each rank's.
"""

from __future__ import annotations

import resource

GIB = 1024**3


def on_gpu() -> bool:
    import paddle

    return paddle.is_compiled_with_cuda() and paddle.get_device().startswith("gpu")


def peak_bytes() -> tuple[float, float | None]:
    """(peak allocated or resident bytes, peak reserved bytes or None) of this rank."""
    if on_gpu():
        import paddle

        return (
            float(paddle.device.cuda.max_memory_allocated()),
            float(paddle.device.cuda.max_memory_reserved()),
        )
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024.0, None


def gather(values: list[float], distributed: bool) -> list[list[float]]:
    """``values`` of every rank, in rank order (one all-gather; every rank must call it)."""
    if not distributed:
        return [values]
    import paddle
    import paddle.distributed as dist

    gathered: list = []
    dist.all_gather(gathered, paddle.to_tensor(values, dtype="float64"))
    return [t.numpy().tolist() for t in gathered]


def peak_record(distributed: bool) -> dict:
    """The memory fields of a metrics record (GiB): the largest peak over the ranks, each rank's,
    and on a GPU the largest reserved peak."""
    allocated, reserved = peak_bytes()
    ranks = gather([allocated, reserved or 0.0], distributed)
    record = {
        "peak_memory_gib": max(r[0] for r in ranks) / GIB,
        "peak_memory_gib_per_rank": [round(r[0] / GIB, 4) for r in ranks],
        "peak_memory_kind": "cuda allocated" if reserved is not None else "process rss",
    }
    if reserved is not None:
        record["peak_reserved_gib"] = max(r[1] for r in ranks) / GIB
    return record


def state_bytes(pm, sharding_stage: int) -> tuple[int, int]:
    """(parameter bytes, AdamW state bytes) this rank holds: its shards of the parameters, and two
    float32 moments per parameter element (divided over dp under ZeRO sharding)."""
    elements, params = pm.local_size()
    moments = 2 * 4 * elements
    if sharding_stage >= 1:
        moments //= pm.strategy.dp
    return params, moments

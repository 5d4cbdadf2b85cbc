"""Put a global tensor back together from its stored pieces, checking they cover it exactly once.

A piece is a box (global offset, shape) of the global tensor, or a flattened run of elements of
such a box (Paddle's sharded optimizer states). Replicas of one box may be stored more than once;
they must agree bit for bit. Boxes that overlap without being replicas must agree where they
overlap. Any element no piece covers is an error. All of this is decided from the metadata before
a byte is read, except the agreement of overlapping data, which is checked as the data arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .errors import CheckpointError


@dataclass(frozen=True)
class Piece:
    offset: tuple[int, ...]
    shape: tuple[int, ...]
    read_into: Callable[[np.ndarray], None] = field(compare=False)  # fills a C-contiguous array
    flat_range: tuple[int, int] | None = None  # for flattened pieces
    where: str = field(default="", compare=False)  # for messages: which file holds it


def _volume(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _slices(offset, shape) -> tuple[slice, ...]:
    return tuple(slice(o, o + n) for o, n in zip(offset, shape))


def _bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.tobytes() == b.tobytes()


@dataclass
class Plan:
    """How a tensor's pieces tile it: ``exact`` (disjoint boxes, nothing missing) or needs a mask."""

    boxes: list[list[Piece]]  # pieces grouped by box; flattened pieces of one box together
    exact: bool


def plan(key: str, global_shape: tuple[int, ...], pieces: list[Piece]) -> Plan:
    if not pieces:
        raise CheckpointError(f"{key}: no stored piece")
    groups: dict[tuple, list[Piece]] = {}
    for p in pieces:
        if len(p.offset) != len(global_shape) or len(p.shape) != len(global_shape):
            raise CheckpointError(
                f"{key}: piece at {p.offset} of shape {p.shape} does not fit "
                f"a tensor of shape {global_shape}"
            )
        if any(o < 0 or o + n > g for o, n, g in zip(p.offset, p.shape, global_shape)):
            raise CheckpointError(
                f"{key}: piece at {p.offset} of shape {p.shape} lies outside "
                f"the tensor's shape {global_shape}"
            )
        groups.setdefault((p.offset, p.shape), []).append(p)
    boxes = list(groups.values())
    for group in boxes:
        _check_flat_runs(key, group)
    total = _volume(global_shape)
    if len(boxes) == 1:
        exact = boxes[0][0].shape == tuple(global_shape)
    else:
        lo = np.array([g[0].offset for g in boxes], dtype=np.int64)
        hi = lo + np.array([g[0].shape for g in boxes], dtype=np.int64)
        # pairwise: boxes i and j intersect iff they overlap on every dimension
        inter = np.all(
            (lo[:, None, :] < hi[None, :, :]) & (lo[None, :, :] < hi[:, None, :]), axis=2
        )
        np.fill_diagonal(inter, False)
        volumes = np.prod(hi - lo, axis=1)
        exact = not inter.any() and int(volumes.sum()) == total
        if not inter.any() and int(volumes.sum()) < total:
            raise CheckpointError(
                f"{key}: stored pieces cover {int(volumes.sum())} of {total} "
                f"elements (first missing at {_first_gap(global_shape, boxes)})"
            )
    if total == 0:
        exact = True
    return Plan(boxes, exact)


def _check_flat_runs(key: str, group: list[Piece]) -> None:
    runs = sorted({p.flat_range for p in group if p.flat_range is not None})
    if not runs:
        return
    if len(runs) != len({p.flat_range for p in group}):
        raise CheckpointError(f"{key}: box at {group[0].offset} is stored both whole and flattened")
    end = 0
    for start, stop in runs:
        if start > end:
            raise CheckpointError(
                f"{key}: flattened pieces of the box at {group[0].offset} miss "
                f"elements [{end}, {start})"
            )
        if start < end:
            raise CheckpointError(
                f"{key}: flattened pieces of the box at {group[0].offset} overlap"
            )
        end = stop
    if end != _volume(group[0].shape):
        raise CheckpointError(
            f"{key}: flattened pieces of the box at {group[0].offset} stop at "
            f"element {end} of {_volume(group[0].shape)}"
        )


def _first_gap(global_shape, boxes) -> tuple[int, ...]:
    mask = np.zeros(global_shape, dtype=bool)
    for g in boxes:
        mask[_slices(g[0].offset, g[0].shape)] = True
    return tuple(int(i) for i in np.argwhere(~mask)[0])


def _read_box(key: str, group: list[Piece], dtype: np.dtype, out: np.ndarray | None) -> np.ndarray:
    """One box's values (into `out` when given, which must be C-contiguous); replicas must agree."""
    shape = group[0].shape
    whole = [p for p in group if p.flat_range is None]
    box = out if out is not None else np.empty(shape, dtype=dtype)
    if whole:
        whole[0].read_into(box)
        for replica in whole[1:]:
            other = np.empty(shape, dtype=dtype)
            replica.read_into(other)
            if not _bitwise_equal(box, other):
                raise CheckpointError(
                    f"{key}: replicas of the piece at {group[0].offset} disagree "
                    f"({whole[0].where} vs {replica.where})"
                )
        return box
    flat = box.reshape(-1)
    seen: dict[tuple[int, int], Piece] = {}
    for p in group:
        start, stop = p.flat_range
        if p.flat_range in seen:
            other = np.empty(stop - start, dtype=dtype)
            p.read_into(other)
            if not _bitwise_equal(flat[start:stop], other):
                raise CheckpointError(
                    f"{key}: replicas of the flattened piece at {p.offset} "
                    f"[{start}, {stop}) disagree"
                )
            continue
        seen[p.flat_range] = p
        p.read_into(flat[start:stop])
    return box


def assemble(
    key: str, global_shape: tuple[int, ...], dtype: np.dtype, pieces: list[Piece]
) -> np.ndarray:
    """The global tensor (storage dtype), read from its pieces."""
    layout = plan(key, tuple(global_shape), pieces)
    out = np.empty(global_shape, dtype=dtype)
    if layout.exact:
        for group in layout.boxes:
            view = out[_slices(group[0].offset, group[0].shape)]
            if view.flags.c_contiguous:
                _read_box(key, group, dtype, view)  # straight from the file into the result
            else:
                view[...] = _read_box(key, group, dtype, None)
        return out
    covered = np.zeros(global_shape, dtype=bool)
    for group in layout.boxes:
        sl = _slices(group[0].offset, group[0].shape)
        data = _read_box(key, group, dtype, None)
        seen = covered[sl]
        if seen.any() and not _bitwise_equal(out[sl][seen], data[seen]):
            raise CheckpointError(f"{key}: overlapping pieces disagree (at {group[0].offset})")
        out[sl] = data
        covered[sl] = True
    if not covered.all():
        missing = tuple(int(i) for i in np.argwhere(~covered)[0])
        raise CheckpointError(
            f"{key}: stored pieces cover {int(covered.sum())} of {covered.size} "
            f"elements (first missing at {missing})"
        )
    return out

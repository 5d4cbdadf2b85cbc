"""Assembly from pieces: exact tiling, gaps, agreeing and disagreeing overlaps, flattened runs."""

from __future__ import annotations

import numpy as np
import pytest

from llama_ckpt.assemble import Piece, assemble
from llama_ckpt.errors import CheckpointError

FULL = np.arange(48, dtype=np.float32).reshape(6, 8)


def box(offset, shape, source=FULL):
    data = source[tuple(slice(o, o + n) for o, n in zip(offset, shape))].copy()
    return Piece(offset, shape, lambda out, d=data: out.__setitem__(..., d))


def flat(start, stop, source=FULL):
    data = source.reshape(-1)[start:stop].copy()
    return Piece((0, 0), source.shape, lambda out, d=data: out.__setitem__(..., d), (start, stop))


def test_grid_of_shards_with_replicas():
    pieces = [box((0, 0), (3, 8)), box((3, 0), (3, 4)), box((3, 4), (3, 4)), box((3, 4), (3, 4))]
    assert np.array_equal(assemble("t", (6, 8), np.float32, pieces), FULL)


def test_gap_is_an_error():
    with pytest.raises(
        CheckpointError, match=r"cover 44 of 48 elements \(first missing at \(5, 0\)\)"
    ):
        assemble("t", (6, 8), np.float32, [box((0, 0), (5, 8)), box((5, 4), (1, 4))])


def test_overlaps_must_agree():
    ok = [box((0, 0), (4, 8)), box((2, 0), (4, 8))]
    assert np.array_equal(assemble("t", (6, 8), np.float32, ok), FULL)
    other = FULL + 1
    bad = [box((0, 0), (4, 8)), box((2, 0), (4, 8), other)]
    with pytest.raises(CheckpointError, match="overlapping pieces disagree"):
        assemble("t", (6, 8), np.float32, bad)
    with pytest.raises(CheckpointError, match="replicas of the piece at"):
        assemble("t", (6, 8), np.float32, [box((0, 0), (6, 8)), box((0, 0), (6, 8), other)])


def test_flattened_runs():
    assert np.array_equal(assemble("t", (6, 8), np.float32, [flat(20, 48), flat(0, 20)]), FULL)
    with pytest.raises(CheckpointError, match=r"miss elements \[20, 25\)"):
        assemble("t", (6, 8), np.float32, [flat(0, 20), flat(25, 48)])


def test_piece_outside_the_tensor():
    with pytest.raises(CheckpointError, match="outside"):
        assemble(
            "t", (6, 8), np.float32, [box((0, 0), (6, 8)), Piece((5, 5), (2, 2), lambda o: None)]
        )

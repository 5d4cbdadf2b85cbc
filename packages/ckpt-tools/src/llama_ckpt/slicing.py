"""Read part of a stored tensor: the rows ``start:stop`` along one axis, and nothing else.

A tensor stored C-contiguous at a known file offset (safetensors data, a pickled numpy array) is
``outer`` blocks of ``shape[axis] × inner`` bytes, where ``outer`` is the product of the dimensions
before ``axis``. A slice along the first axis is one contiguous range (one read); along a later axis
it is one strided read per outer block, each straight into the output. Either way the memory used
is the slice's, never the tensor's, which is what lets every rank of a tensor-parallel job read
only its shard of a model file.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import CheckpointError
from .safe_pickle import pread_into


def slice_shape(shape: tuple[int, ...], axis: int, start: int, stop: int) -> tuple[int, ...]:
    if not 0 <= axis < len(shape) or not 0 <= start <= stop <= shape[axis]:
        raise CheckpointError(f"slice {start}:{stop} on axis {axis} is outside shape {list(shape)}")
    return (*shape[:axis], stop - start, *shape[axis + 1 :])


def read_along(
    path: str,
    offset: int,
    shape: tuple[int, ...],
    storage: np.dtype,
    axis: int,
    start: int,
    stop: int,
) -> np.ndarray:
    """``array[..., start:stop, ...]`` (on ``axis``) of the C-contiguous array of ``shape`` and
    ``storage`` dtype stored at byte ``offset`` of ``path``, as a new C-contiguous array."""
    out = np.empty(slice_shape(shape, axis, start, stop), dtype=storage)
    if out.size == 0:
        return out
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1 :], dtype=np.int64)) * storage.itemsize
    block = shape[axis] * inner  # bytes of one outer block in the file
    take = (stop - start) * inner  # bytes of it that the slice keeps
    buf = memoryview(out.reshape(-1).view(np.uint8))
    fd = os.open(path, os.O_RDONLY)
    try:
        if take == block:  # whole blocks back to back: one read
            pread_into(fd, path, buf, offset)
        else:
            first = offset + start * inner
            for i in range(outer):
                pread_into(fd, path, buf[i * take : (i + 1) * take], first + i * block)
    finally:
        os.close(fd)
    return out


def take_along(array: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    """The same slice of an array already in memory (for sources that cannot read a part)."""
    slice_shape(array.shape, axis, start, stop)
    index = [slice(None)] * array.ndim
    index[axis] = slice(start, stop)
    return np.ascontiguousarray(array[tuple(index)])

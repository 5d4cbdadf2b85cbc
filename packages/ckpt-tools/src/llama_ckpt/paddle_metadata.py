"""Stand-ins for the classes Paddle pickles into a distributed checkpoint's `.metadata` file.

Paddle 3.x defines them in `paddle/distributed/flex_checkpoint/dcp/metadata.py` (2.6 to 3.0 in
`paddle/distributed/checkpoint/metadata.py`) as plain dataclasses. The restricted unpickler maps
those class paths, and only those, to the dataclasses below, so reading a checkpoint needs no Paddle.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LocalTensorMetadata:
    """Where one rank's piece of a tensor sits in the global tensor."""

    global_offset: tuple[int, ...]
    local_shape: tuple[int, ...]
    dtype: str
    global_shape: tuple[int, ...] | None = None
    # A flattened piece holds elements [start, stop) of the row-major block at global_offset.
    is_flattened: bool = False
    flattened_range: tuple[int, int] | None = None


@dataclass(frozen=True)
class LocalTensorIndex:
    """The key of one stored piece in `Metadata.storage_metadata`."""

    tensor_key: str
    global_offset: tuple[int, ...]
    is_flattened: bool = False
    flattened_range: tuple[int, int] | None = None
    replica_id: int | None = None
    local_shape: tuple[int, ...] | None = None


@dataclass
class Metadata:
    state_dict_metadata: dict[str, list[LocalTensorMetadata]] | None = None
    storage_metadata: dict[LocalTensorIndex, str] | None = None
    flat_mapping: dict[str, tuple[str, ...]] | None = None


_CLASSES = {c.__name__: c for c in (LocalTensorMetadata, LocalTensorIndex, Metadata)}
STAND_INS = {
    "paddle.distributed.flex_checkpoint.dcp.metadata": _CLASSES,
    "paddle.distributed.checkpoint.metadata": _CLASSES,
}

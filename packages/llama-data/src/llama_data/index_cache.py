"""On-disk cache of index arrays: built once by one process, memory-mapped by every process.

A cache entry is a few ``STEM.NAME.npy`` files plus ``STEM.json``. The stem carries a hash of every
input that determines the arrays, so a changed input never reads a stale entry. Files are written
under temporary names and renamed; the ``.json`` goes last and records each array's shape, dtype and
byte size, so an entry is either complete or ignored: a build that crashed, or a file that was later
truncated, is detected and rebuilt.

In a distributed job every process calls :func:`build_or_load` with the same arguments. The builder
(rank 0) builds when the entry is missing or damaged; the other ranks wait for a complete entry,
polling the files (no framework needed), and fail with a clear message after ``timeout`` seconds.
The builder is the node-local rank 0 when the launcher says which that is: on a shared file system
several nodes then write identical files (harmless, every write is atomic), and on node-local disks
no node waits for a file that only another node can see.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llama_data.errors import DataError
from llama_data.fileio import write_atomically

CACHE_FORMAT_VERSION = 1
DEFAULT_TIMEOUT = 1800.0  # seconds a non-builder waits; a big corpus takes minutes on rank 0
_RANK_ENVS = ("PADDLE_RANK_IN_NODE", "LOCAL_RANK", "PADDLE_TRAINER_ID", "RANK")

Builder = Callable[[], tuple[dict[str, np.ndarray], dict]]


@dataclass
class CacheEntry:
    """Loaded arrays (memory-mapped when cached), the builder's extra fields, and where they live."""

    arrays: dict[str, np.ndarray]
    extra: dict
    paths: dict[str, Path] = field(default_factory=dict)
    built: bool = False  # True when this call built the arrays instead of reading them


def resolve_rank(rank: int | None = None) -> int:
    """``rank`` if given, else the launcher's (node-local first), else 0."""
    if rank is not None:
        return int(rank)
    for name in _RANK_ENVS:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise DataError(
                    f"environment variable {name}={value!r} is not an integer"
                ) from None
    return 0


def fingerprint(*arrays: np.ndarray) -> str:
    """SHA-256 of the arrays' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def cache_key(fields: dict) -> str:
    """Hex digest naming a cache entry: a hash of every field (JSON, sorted) and the format version."""
    text = json.dumps({"cache_format": CACHE_FORMAT_VERSION, **fields}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def entry_paths(cache_dir: Path, stem: str, names: list[str]) -> dict[str, Path]:
    paths = {name: cache_dir / f"{stem}.{name}.npy" for name in names}
    paths["meta"] = cache_dir / f"{stem}.json"
    return paths


def load_entry(cache_dir: Path, stem: str) -> CacheEntry | None:
    """The complete entry, memory-mapped; None when it is absent, partial or damaged."""
    meta_path = cache_dir / f"{stem}.json"
    try:
        meta = json.loads(meta_path.read_text())
        files = meta["files"]
        paths = entry_paths(cache_dir, stem, list(files))
        arrays = {}
        for name, info in files.items():
            path = paths[name]
            if path.stat().st_size != info["bytes"]:
                return None
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if list(arr.shape) != info["shape"] or arr.dtype.str != info["dtype"]:
                return None
            arrays[name] = arr
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return CacheEntry(arrays, meta.get("extra", {}), paths, built=False)


def save_entry(
    cache_dir: Path, stem: str, arrays: dict[str, np.ndarray], description: dict, extra: dict
) -> None:
    """Write the arrays, then the ``.json`` that makes the entry visible."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = entry_paths(cache_dir, stem, list(arrays))
    files = {}
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        write_atomically(
            paths[name], lambda f, a=arr: np.save(f, a, allow_pickle=False), fsync=True
        )
        files[name] = {
            "shape": list(arr.shape),
            "dtype": arr.dtype.str,
            "bytes": paths[name].stat().st_size,
        }
    meta = {"description": description, "extra": extra, "files": files}
    text = json.dumps(meta, indent=1, sort_keys=True).encode()
    write_atomically(paths["meta"], lambda f: f.write(text), fsync=True)


def build_or_load(
    cache_dir: str | os.PathLike | None,
    stem: str,
    description: dict,
    build: Builder,
    *,
    rank: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    poll_interval: float = 0.2,
) -> CacheEntry:
    """Read the entry ``STEM`` from ``cache_dir``, or build it (rank 0) / wait for it (other ranks).

    ``build()`` returns ``(arrays, extra)``; ``extra`` is JSON-able and comes back with a cached load.
    With ``cache_dir=None`` every process builds in memory.
    """
    if cache_dir is None:
        arrays, extra = build()
        return CacheEntry(arrays, extra, {}, built=True)
    cache_dir = Path(cache_dir)
    entry = load_entry(cache_dir, stem)
    if entry is not None:
        return entry
    if resolve_rank(rank) == 0:
        arrays, extra = build()
        try:
            save_entry(cache_dir, stem, arrays, description, extra)
        except OSError as exc:
            raise DataError(
                f"cannot write the index cache in {cache_dir} ({exc.strerror or exc}); "
                "choose a writable cache directory"
            ) from None
        entry = load_entry(cache_dir, stem)
        if entry is None:  # pragma: no cover - only if another process damages it meanwhile
            raise DataError(f"index cache {cache_dir / stem}.* was damaged right after writing")
        entry.built = True
        return entry
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(poll_interval)
        entry = load_entry(cache_dir, stem)
        if entry is not None:
            return entry
        if time.monotonic() > deadline:
            raise DataError(
                f"waited {timeout:g}s for rank 0 to build the index cache "
                f"{cache_dir / stem}.json; check that rank 0 runs and can write {cache_dir}"
            )

"""Outputs appear under their final name complete or not at all.

Everything is written under a hidden temporary name in the destination's directory and renamed at
the end (`os.replace`, atomic on one file system). On any error, or Ctrl-C, the temporary is
removed and an existing destination is left as it was. This is the project's one implementation
for every package that depends on llama-ckpt-tools (llama-model, llama-train, llama-infer).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import CheckpointError


def check_destination(final: str, overwrite: bool) -> None:
    if os.path.lexists(final) and not overwrite:
        raise CheckpointError(f"{final} already exists (pass --overwrite to replace it)")
    parent = os.path.dirname(os.path.abspath(final))
    if not os.path.isdir(parent):
        raise CheckpointError(f"{parent} does not exist")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


@contextmanager
def atomic_output(final: str, overwrite: bool, directory: bool = False) -> Iterator[str]:
    """Yield a temporary path to write (a new empty directory if `directory`); publish it on success."""
    check_destination(final, overwrite)
    final = os.path.abspath(final)
    tmp = os.path.join(
        os.path.dirname(final), f".{os.path.basename(final)}.tmp-{uuid.uuid4().hex[:8]}"
    )
    if directory:
        os.mkdir(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if os.path.lexists(final):
        old = f"{tmp}.old"
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)


def write_atomic(path: str | os.PathLike, data: str | bytes, fsync: bool = False) -> None:
    """Replace the file ``path`` by ``data`` (text as UTF-8) in one rename; ``fsync``: on disk
    before the rename (a pointer that must survive a power cut, such as a checkpoint's)."""
    path = os.fspath(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_output(path, overwrite=True) as tmp, open(tmp, "wb") as fh:
        fh.write(raw)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())

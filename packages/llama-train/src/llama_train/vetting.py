"""Vetting a checkpoint before Paddle reads it: only plain data, and nothing missing.

``dist.load_state_dict`` reads a checkpoint's ``.metadata`` and ``.distcp`` files with Python's
pickle, which runs whatever callable a file names: a checkpoint from somewhere else could run code
the moment it is resumed. ``vet_checkpoint`` first reads every one of those files with
llama-ckpt-tools' restricted unpickler (numpy arrays, builtin containers and Paddle's checkpoint
metadata classes, nothing else; nothing is called), and checks the checkpoint against its metadata:
every data file the metadata names exists, holds the tensors it says with their shapes, and is long
enough for the bytes they span. Tensor payloads stay on disk (the unpickler records their offsets),
so vetting a checkpoint of many gigabytes reads its small pickle skeletons only.
"""

from __future__ import annotations

import re
from pathlib import Path

from llama_train.errors import TrainError

_METADATA = re.compile(r"^(\d+)\.metadata$")
_REFUSED_GLOBAL = re.compile(r"^refusing to load '([^']+)'")


def vet_checkpoint(path: Path) -> None:
    """Raise ``TrainError`` (one line naming the file and the cause) unless every ``*.metadata`` and
    ``*.distcp`` file of the checkpoint directory ``path`` is plain checkpoint data and the data
    files the metadata names are all there, whole."""
    from llama_ckpt import CheckpointError, DistCheckpoint, UnsafePickleError, safe_load

    path = Path(path)
    current = path
    try:
        files = sorted(path.iterdir())
    except OSError as exc:
        raise TrainError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    uids = sorted(int(m.group(1)) for f in files if (m := _METADATA.match(f.name)))
    if not uids:
        raise TrainError(f"incomplete checkpoint: {path} has no .metadata file")
    try:
        parsed: set[str] = set()
        for uid in uids:
            current = path / f"{uid}.metadata"
            # Reads the metadata, then every data file it names (restricted unpickler, payloads
            # left on disk), and checks each stored piece against the metadata.
            ckpt = DistCheckpoint(str(path), prefix="", unique_id=uid)
            parsed.add(current.name)
            parsed.update(p.file for t in ckpt.tensors.values() for p in t.pieces)
        for file in files:  # data files no metadata names are vetted too
            if file.suffix in (".metadata", ".distcp") and file.name not in parsed:
                current = file
                safe_load(str(file))
    except UnsafePickleError as exc:
        where, reason = _split(str(exc), path, current)
        raise TrainError(f"refused: {where} is not a plain checkpoint file ({reason})") from None
    except CheckpointError as exc:
        raise TrainError(f"incomplete or damaged checkpoint: {_one_line(str(exc))}") from None
    except OSError as exc:
        where = exc.filename or current
        raise TrainError(f"cannot read checkpoint file {where}: {exc.strerror or exc}") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _split(message: str, directory: Path, fallback: Path) -> tuple[str, str]:
    """(file, reason) of llama-ckpt's ``"<file>: <reason>"`` message."""
    message = _one_line(message)
    head, sep, reason = message.partition(": ")
    if not (sep and head.startswith(str(directory))):
        head, reason = str(fallback), message
    named = _REFUSED_GLOBAL.match(reason)  # "refusing to load 'posix.system' (a checkpoint ...)"
    if named:
        reason = f"it imports {named.group(1)}"
    return head, reason

"""The run-directory protocol of llama-train, as readers of its checkpoints see it.

A run directory ``OUTPUT`` holds ``checkpoints/step-XXXXXXXX/`` directories and ``checkpoints/latest``,
a text file naming the newest complete one. A step directory is complete when it holds ``COMPLETE``
(written last, before the directory got its final name) and ``trainer_state.json``; anything else
is a save that did not finish and must not be read.
"""

from __future__ import annotations

import os

from .errors import CheckpointError

LATEST = "latest"
COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"


def is_complete(step_dir: str) -> bool:
    return os.path.isfile(os.path.join(step_dir, COMPLETE)) and os.path.isfile(
        os.path.join(step_dir, TRAINER_STATE)
    )


def resolve_checkpoint(path: str) -> str:
    """``path`` itself, or, for a run directory or its ``checkpoints/`` directory, the step directory
    its ``latest`` names. A llama-train step directory (one with ``trainer_state.json``) must be
    complete; other inputs (model directories, files, Paddle's own checkpoints) pass unchanged."""
    for candidate in (path, os.path.join(path, "checkpoints")):
        pointer = os.path.join(candidate, LATEST)
        if os.path.isfile(pointer):
            try:
                with open(pointer, encoding="utf-8") as fh:
                    name = fh.read().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise CheckpointError(f"cannot read {pointer}: {exc}") from None
            step = os.path.join(candidate, name)
            if not name or os.sep in name or not os.path.isdir(step):
                raise CheckpointError(f"{pointer} names no checkpoint directory ({name!r})")
            path = step
            break
    if os.path.isfile(os.path.join(path, TRAINER_STATE)) and not is_complete(path):
        raise CheckpointError(
            f"{path} is an incomplete checkpoint (no {COMPLETE} marker: its save did not finish)"
        )
    return path

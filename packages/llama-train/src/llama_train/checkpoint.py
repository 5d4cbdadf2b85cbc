"""Training checkpoints: atomic, resumable across layouts, with a ``latest`` pointer and keep-last-K.

Layout (``OUTPUT/checkpoints/``)::

    step-00001000/
        0.metadata, {rank}_0.distcp     dist.save_state_dict of every rank's share:
                                          model.<param name>, optimizer.<param name>.<accumulator>
        config.json                     the model config (Hugging Face field names)
        trainer_state.json              step, consumed samples, seed, strategy, data fingerprint, ...
        tokenizer.model | tokenizer.json   copied from --tokenizer, when it is a file
        COMPLETE                        written last, before the directory gets its final name
    latest                              a text file naming the newest complete checkpoint

A save goes to ``step-XXXXXXXX.tmp`` (every rank writes its pieces), then rank 0 adds the JSON
files and ``COMPLETE``, renames the directory to its final name and replaces ``latest`` through a
temporary file and ``os.replace``. A crash at any point leaves ``latest`` on the previous complete
checkpoint; a leftover ``.tmp`` directory is removed by the next run (or at once by the rank whose
write failed). ``latest`` is a small text file rather than a symlink so that it survives copies to
object stores and file systems without links.

``latest`` is the timeline: a run resumed from an older checkpoint first moves every newer step
directory to ``abandoned-<time>/`` (see :func:`abandon_newer`), so a later save never meets, skips
or mixes with a checkpoint of the abandoned future. The same happens to a checkpoint that a crash
published without updating ``latest``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from llama_ckpt.atomic import write_atomic
from llama_ckpt.runs import COMPLETE, LATEST, TRAINER_STATE  # the protocol's names: one owner
from llama_train import test_hooks
from llama_train.errors import TrainError, is_network_error

FORMAT = "llama-train-checkpoint"
FORMAT_VERSION = 1
MODEL_PREFIX = "model."
_STEP_DIR = re.compile(r"^step-(\d{8,})$")
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


@dataclass
class TrainerState:
    step: int = 0  # optimizer updates done
    consumed_samples: int = 0  # samples of the train order read so far
    global_batch_size: int = 0
    seed: int = 0
    strategy: str = ""
    world_size: int = 1
    data_fingerprint: str = ""
    seq_len: int = 0
    loss: float | None = None  # loss of the last step
    init_from: dict | None = None  # the weights the run started from (path, format, layout, digest)
    # Random draws are seeded per step from (seed, step): the state is the pair, not a generator dump.
    rng: str = "paddle.seed(seed * 1_000_003 + step) before each step; numpy is not used for draws"
    format: str = FORMAT
    version: int = FORMAT_VERSION
    saved_at: float = 0.0

    @classmethod
    def read(cls, path: Path) -> TrainerState:
        try:
            data = json.loads((path / TRAINER_STATE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TrainError(f"{path}: unreadable {TRAINER_STATE} ({exc})") from None
        if data.get("format") != FORMAT:
            raise TrainError(
                f"{path}: not a llama-train checkpoint ({TRAINER_STATE} says {data.get('format')!r})"
            )
        if data.get("version") != FORMAT_VERSION:
            raise TrainError(
                f"{path}: checkpoint format version {data.get('version')} (this llama-train reads {FORMAT_VERSION})"
            )
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def _write_atomic(path: Path, text: str) -> None:
    write_atomic(path, text, fsync=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file() and (path / TRAINER_STATE).is_file()


def resolve_resume(spec: str | None, output: str) -> Path | None:
    """The checkpoint to resume from: None to start fresh. ``auto``: the latest complete checkpoint of
    ``output`` (None if it has none); a path: a step directory, a ``checkpoints/`` directory or a run
    directory (its latest)."""
    if spec is None:
        return None
    if spec == "auto":
        return latest(Path(output) / "checkpoints")
    path = Path(spec)
    for candidate in (path, path / "checkpoints"):
        if (candidate / LATEST).is_file():
            found = latest(candidate)
            if found is None:
                raise TrainError(
                    f"--resume {spec}: {candidate / LATEST} names no complete checkpoint"
                )
            return found
    if not path.is_dir():
        raise TrainError(f"--resume {spec}: no such checkpoint directory")
    if not is_complete(path):
        raise TrainError(f"--resume {spec}: not a complete checkpoint (no {COMPLETE} marker)")
    return path


def latest(checkpoints: Path) -> Path | None:
    try:
        name = (checkpoints / LATEST).read_text().strip()
    except OSError:
        return None
    path = checkpoints / name
    return path if name and is_complete(path) else None


def step_of(path: Path) -> int | None:
    match = _STEP_DIR.match(path.name)
    return int(match.group(1)) if match else None


def step_dirs(checkpoints: Path) -> list[Path]:
    """The ``step-N`` directories (complete or not, no ``.tmp``), oldest first."""
    try:
        entries = list(checkpoints.iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if p.is_dir() and step_of(p) is not None)


def newer_than(checkpoints: Path, step: int) -> list[Path]:
    return [p for p in step_dirs(checkpoints) if step_of(p) > step]


def abandon_newer(checkpoints: Path, resumed: Path) -> Path | None:
    """Make ``resumed`` the end of the timeline: ``latest`` names it (or nothing, when it lies
    outside ``checkpoints``), then every step directory after it moves to
    ``checkpoints/abandoned-<time>/``. Moved, not deleted: a rollback by mistake loses nothing, and
    the user deletes the folder when sure. Returns that folder, or None if nothing moved.

    ``latest`` is written first, so a crash half-way leaves it right and the next start moves the
    rest."""
    inside = resumed.parent.resolve() == checkpoints.resolve()
    # From outside, this directory's own checkpoints are another timeline, older ones included.
    after = TrainerState.read(resumed).step if inside else -1
    newer = newer_than(checkpoints, after)
    if not newer and (latest(checkpoints) == resumed or not (checkpoints / LATEST).exists()):
        return None
    if inside:
        _write_atomic(checkpoints / LATEST, resumed.name + "\n")
    else:
        (checkpoints / LATEST).unlink(missing_ok=True)
    if not newer:
        return None
    target = abandoned_dir(checkpoints)
    for path in newer:
        os.replace(path, target / path.name)
    _fsync_dir(checkpoints)
    return target


def abandoned_dir(checkpoints: Path) -> Path:
    """A new, unique ``abandoned-<time>-<suffix>`` folder."""
    prefix = time.strftime("abandoned-%Y%m%d-%H%M%S-")
    return Path(tempfile.mkdtemp(prefix=prefix, dir=checkpoints))


def remove_partial_saves(checkpoints: Path) -> list[Path]:
    """Delete the ``step-*.tmp`` directories that a killed or failed save left behind."""
    leftovers = sorted(checkpoints.glob("step-*.tmp")) if checkpoints.is_dir() else []
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)
    return leftovers


def _write_failed(exc: OSError, tmp: Path, rank: int, alone: bool) -> TrainError:
    # A full disk stays full while the partial save stays. Alone, the rank removes it at once; with
    # peers still writing into it, it removes its own shard only (room for its one-line error
    # record), and the front process removes the rest once every rank has exited.
    if alone:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        for own in tmp.glob(f"{rank}_*.distcp"):
            own.unlink(missing_ok=True)
    where = exc.filename or tmp
    kept = latest(tmp.parent)
    if kept is not None:
        keeps = f"the last complete checkpoint, {kept.name}, is kept"
    else:
        keeps = "this run has no complete checkpoint yet"
    return TrainError(
        f"cannot write checkpoint {where}: {exc.strerror or exc} (the partial save {tmp.name} is "
        f"removed; {keeps})"
    )


class CheckpointManager:
    """Saves and loads the checkpoints of one run; every rank makes the same calls."""

    def __init__(
        self,
        output: str,
        rank: int,
        world_size: int,
        keep_last: int,
        model_config,
        tokenizer: str | None,
    ):
        self.root = Path(output) / "checkpoints"
        self.rank = rank
        self.world_size = world_size
        self.keep_last = keep_last
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.published: set[int] = set()  # steps this run has saved
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            remove_partial_saves(self.root)  # a save that was killed half-way
        self._barrier()

    def _barrier(self) -> None:
        if self.world_size > 1:
            import paddle.distributed as dist

            dist.barrier()

    # ------------------------------------------------------------------------------------ save
    def save(self, state: TrainerState, tensors: dict) -> Path:
        """Write ``tensors`` (model.* and optimizer.* of this rank) and ``state`` as step ``state.step``."""
        import paddle.distributed as dist

        final = self.root / step_dir_name(state.step)
        if state.step in self.published:  # a signal right after the periodic save of this step
            return final
        tmp = final.with_name(final.name + ".tmp")
        try:
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            self._barrier()
            dist.save_state_dict(tensors, str(tmp))
            test_hooks.maybe_fail_save(state.step, self.rank, tmp)
            self._barrier()
            if self.rank == 0:
                self._publish(tmp, final, state)
        except OSError as exc:
            if is_network_error(exc):  # a peer went away: not this disk's doing
                raise
            raise _write_failed(exc, tmp, self.rank, alone=self.world_size == 1) from None
        self._barrier()
        self.published.add(state.step)
        return final

    def _publish(self, tmp: Path, final: Path, state: TrainerState) -> None:
        self.model_config.to_json(str(tmp / "config.json"))
        self._copy_tokenizer(tmp)
        state.saved_at = time.time()
        _write_atomic(tmp / TRAINER_STATE, json.dumps(asdict(state), indent=2) + "\n")
        _write_atomic(tmp / COMPLETE, f"{state.step}\n")
        _fsync_dir(tmp)
        if final.exists():
            # Not this run's (rollbacks move the future away before training): never skipped,
            # never mixed; kept aside like an abandoned checkpoint.
            os.replace(final, abandoned_dir(self.root) / final.name)
        os.replace(tmp, final)
        _fsync_dir(self.root)
        _write_atomic(self.root / LATEST, final.name + "\n")
        _fsync_dir(self.root)
        self._prune(keep=final.name)

    def _copy_tokenizer(self, target: Path) -> None:
        if not self.tokenizer or self.tokenizer == "byte":
            return
        src = Path(self.tokenizer)
        if src.is_dir():
            for name in TOKENIZER_FILES:
                if (src / name).is_file():
                    shutil.copyfile(src / name, target / name)
        elif src.is_file():
            name = "tokenizer.json" if src.suffix == ".json" else "tokenizer.model"
            shutil.copyfile(src, target / name)

    def _prune(self, keep: str) -> None:
        if not self.keep_last:
            return
        for old in step_dirs(self.root)[: -self.keep_last]:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------------------------ load
    def load(self, path: Path, tensors: dict) -> TrainerState:
        """Fill ``tensors`` in place from the checkpoint at ``path`` (any layout: Paddle reshards)."""
        import paddle.distributed as dist

        from llama_model.paddle_compat import gloo

        state = TrainerState.read(path)
        try:
            with gloo.loading_checkpoints():
                dist.load_state_dict(tensors, str(path))
        except (KeyError, ValueError, AssertionError) as exc:
            raise TrainError(f"cannot load {path}: {str(exc).strip().splitlines()[0]}") from None
        return state

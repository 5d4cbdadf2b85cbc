"""Everything checked and built before any training process starts.

Options, model shape, layout against the model and the backend, the weights of ``--init-from``
(every name and shape against the model, from the file headers), the data files (existence, token
ids within the vocabulary), the sample indices (built here once, read by every rank), enough data
for the steps asked, the output directory, and the checkpoint a run resumes from (its model config,
its data order, every rank file vetted by the restricted unpickler and present in full). A mistake
here costs a second, not a launch of N processes.

Nothing is written into the run directory until all of it has passed, under the run's lock: a
refused start leaves the directory as it was. Then stale partial saves are removed, a rollback
moves the abandoned checkpoints aside, and the run's record (``run_record.RunRecord``: the options
and what they resolved to) lands in ``OUTPUT/run_config.json``, the model config it was checked
against in ``OUTPUT/config.json``; the ranks read both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from llama_train import checkpoint, model_setup, run_record
from llama_train.data import TrainData, check_data_files
from llama_train.errors import TrainError, os_error_line
from llama_train.options import RunConfig
from llama_train.progress import heartbeat
from llama_train.restarts import DECISION
from llama_train.run_record import RunRecord
from llama_train.runlock import RunLock, check_node0_holds
from llama_train.supervise import RUN_ID_ENV
from llama_train.vetting import vet_checkpoint


@dataclass
class Prepared:
    run: RunRecord
    lock: RunLock | None  # None on the nodes other than 0 (node 0 holds it)
    lock_fd: int | None  # what the launcher inherits
    run_id: str
    abandoned: Path | None = None  # where a rollback moved the newer checkpoints
    removed_partial: int = 0
    init_ignored_for: Path | None = None  # the checkpoint resumed instead of --init-from


def prepare(cfg: RunConfig, say=None, started: float | None = None) -> Prepared:
    """Check ``cfg`` and the run directory and resolve the run's record; raises TrainError with
    one line. The returned lock is held until the caller releases it (or exits). ``say``: where
    progress lines of long checks go (none if not given); ``started``: when the command started
    (``--max-duration`` counts from it)."""
    config, fresh = check_options(cfg, started)
    from llama_train.plan.prelaunch import refuse_what_cannot_fit

    refuse_what_cannot_fit(fresh, config)  # on a GPU: a layout that cannot fit, before any launch
    with heartbeat("checking the data and building its sample indices", say):
        check_data_files(cfg.data, config.vocab_size)
        data = TrainData(fresh, rank=0)
    data.check_enough(cfg.training.max_steps)
    out = Path(cfg.job.output)
    _check_output_path(out)
    run_id = os.environ.get(RUN_ID_ENV) or uuid.uuid4().hex[:12]
    nodes = fresh.nodes
    if nodes.node_rank > 0:
        # Node 0 validates, writes and holds the lock on the shared output; this node checks it
        # and takes node 0's run id, so that exits are compared across nodes.
        holder = check_node0_holds(out, nodes.master)
        return Prepared(fresh, None, None, holder.get("run_id") or run_id)

    created = _make_dir(out)
    lock = RunLock(out)
    try:
        try:
            lock.acquire()
        except OSError as exc:
            raise TrainError(os_error_line(exc, out)) from None
        resumed = _check_resume(cfg, out, config, data)
        init_source = None
        if cfg.model.init_from and resumed is None:
            # read by the ranks only: checked here, recorded
            init_source = model_setup.check_init_weights(cfg.model, config).record()
        # every rank loads exactly the checkpoint checked here
        resume = str(resumed.resolve()) if resumed is not None else None
        run = dataclasses.replace(fresh, resume=resume, init_source=init_source)
    except TrainError:
        lock.release(undo=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    try:
        prepared = _write_run_files(run, out, config, lock, run_id, resumed)
    except OSError as exc:
        lock.release()
        raise TrainError(os_error_line(exc, out)) from None
    if cfg.model.init_from and resumed is not None:
        prepared.init_ignored_for = resumed
    return prepared


def check_options(cfg: RunConfig, started: float | None = None):
    """The checks that need neither the data nor the run directory: the trackers, the model's shape,
    the sequence length and the layout against the model, the batch and the backend, the nodes.
    Returns the model config and the record of a fresh start (``run_record.resolve``); raises
    TrainError with one line."""
    from llama_train.reporting import check_available, parse_report_to

    check_available(parse_report_to(cfg.logging.report_to))
    config = model_setup.model_config(cfg.model)
    record = run_record.resolve(cfg, config, started=started)
    model_setup.check_layout(record, config)
    return config, record


def _check_output_path(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise TrainError(f"--output {out} is a file, not a directory")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise TrainError(f"--output {out}: {parent} is a file, not a directory")


def _make_dir(out: Path) -> bool:
    """Create the run directory if needed (True if it did); OS errors as one line."""
    if out.is_dir():
        if os.statvfs(out).f_flag & os.ST_RDONLY:
            raise TrainError(f"cannot write {out}: Read-only file system")
        if not os.access(out, os.W_OK | os.X_OK):
            raise TrainError(f"cannot write {out}: Permission denied")
        return False
    try:
        out.mkdir(parents=True)
    except OSError as exc:
        raise TrainError(os_error_line(exc, out)) from None
    return True


def _check_resume(cfg: RunConfig, out: Path, config, data: TrainData) -> Path | None:
    """The checkpoint to resume from, checked as far as possible without Paddle: read-only."""
    ckpts = out / "checkpoints"
    existing = checkpoint.step_dirs(ckpts)
    if cfg.checkpoint.resume is None and existing:
        raise TrainError(
            f"{out} already holds checkpoints: pass --resume auto to continue, or another --output"
        )
    path = checkpoint.resolve_resume(cfg.checkpoint.resume, cfg.job.output)
    if path is None:
        if existing:  # e.g. a crash before the first `latest` of a timeline
            raise TrainError(
                f"--resume auto: {ckpts} holds checkpoints but no valid 'latest'; pass --resume "
                f"with the one to continue from (the newest is {existing[-1]})"
            )
        return None
    from llama_model import LlamaConfig

    try:
        saved = LlamaConfig.from_json(str(path / "config.json"))
    except (OSError, ValueError, TypeError) as exc:
        raise TrainError(f"--resume {path}: unreadable config.json ({exc})") from None
    if saved != config:
        raise TrainError(
            f"--resume {path}: the checkpoint's model config differs from --model-config"
            f"{model_setup.first_difference(saved, config)}"
        )
    state = checkpoint.TrainerState.read(path)
    if state.data_fingerprint != data.fingerprint:
        raise TrainError(
            f"--resume {path}: the data order differs from the checkpoint's (data, --split, "
            "--seq-len, --seed or --max-epochs changed)"
        )
    vet_checkpoint(path)
    return path


def _write_run_files(run: RunRecord, out: Path, config, lock: RunLock, run_id: str, resumed):
    # Shared with the job's processes first: should another job take the lock in the moment of
    # that change, this one stops here, before writing anything.
    lock_fd = lock.publish(run_id, run.nodes.master)
    ckpts = out / "checkpoints"
    removed = checkpoint.remove_partial_saves(ckpts)  # first: a full disk gets its space back
    abandoned = checkpoint.abandon_newer(ckpts, resumed) if resumed is not None else None
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    clear_attempt_files(logs)
    for stale in ("events.jsonl", DECISION):
        (logs / stale).unlink(missing_ok=True)
    run.write(str(out / "run_config.json"))
    config.to_json(str(out / "config.json"))
    return Prepared(run, lock, lock_fd, run_id, abandoned, len(removed))


def clear_attempt_files(logs: Path, keep_in: Path | None = None) -> None:
    """Remove (or move into ``keep_in``) what the processes of one start of the job wrote about
    themselves: exit records, error reports, progress records, stacks, the end markers."""
    patterns = ("error.*", "exit.*.json", "progress.*", "stacks.*", "preempted", "finished")
    if keep_in is not None:
        keep_in.mkdir(parents=True, exist_ok=True)
    for pattern in patterns:
        for stale in logs.glob(pattern):
            if keep_in is not None and pattern not in ("progress.*", "stacks.*"):
                stale.replace(keep_in / stale.name)
            else:
                stale.unlink(missing_ok=True)


def prepare_restart(prepared: Prepared, keep_in: Path) -> Prepared:
    """The next start of a job that failed (``--max-restarts``), under the lock it holds: from the
    run's latest complete checkpoint, checked as a first start's is (vetted, its model config and
    data order), or from the beginning when it has none. What the failed start's processes wrote
    about themselves moves to ``keep_in``. Raises TrainError with one line."""
    run = prepared.run
    out = Path(run.output)
    cfg = run.options
    auto = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, resume="auto"))
    config = model_setup.model_config(cfg.model)
    data = TrainData(run, rank=0)
    ckpts = out / "checkpoints"
    removed = checkpoint.remove_partial_saves(ckpts)
    resumed = _check_resume(auto, out, config, data)
    abandoned = checkpoint.abandon_newer(ckpts, resumed) if resumed is not None else None
    if resumed is None and run.resume is not None:
        # no checkpoint of its own yet: from where the failed start began (another run's)
        resumed = Path(run.resume)
        vet_checkpoint(resumed)
    resume = str(resumed.resolve()) if resumed is not None else None
    init_source = run.init_source if resumed is None else None
    if resumed is None and cfg.model.init_from and init_source is None:
        init_source = model_setup.check_init_weights(cfg.model, config).record()
    restarted = dataclasses.replace(run, resume=resume, init_source=init_source)
    logs = out / "logs"
    clear_attempt_files(logs, keep_in)
    restarted.write(str(out / "run_config.json"))
    return dataclasses.replace(prepared, run=restarted, abandoned=abandoned,
                               removed_partial=len(removed))  # fmt: skip

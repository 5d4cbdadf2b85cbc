"""One rank of a training job: ``python -m llama_train.worker OUTPUT/run_config.json``.

Started by paddle.distributed.launch (or called in-process for a one-process run). Reads what the
front process checked and resolved: the run's record (``OUTPUT/run_config.json``: the options, the
Strategy, the sequence length, the checkpoint to resume, the init weights) and the model config
(``OUTPUT/config.json``), deriving none of them again. Builds this rank's stage, the optimizer,
the data order, restores the checkpoint when resuming, and runs the loop. Whatever ends a rank with an exception ends it with one line (``errors.classify``: a
user's mistake, an unreadable input or an unwritable run directory exit 2, a non-finite loss 3,
anything else 1 with the exception's line), written at once to ``OUTPUT/logs/error.<rank>``
(``supervise.RankReport``) with the time it raised and whether it follows from another process's
failure, for the front process to blame the right rank.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from llama_ckpt.clikit import EXIT_CRASH
from llama_train import test_hooks
from llama_train.errors import TrainError


def rank_from_env() -> int:
    return int(os.environ.get("PADDLE_TRAINER_ID", "0"))


def events_file(output: str) -> Path:
    """Rank 0's console lines as JSON lines, which the launcher relays (``console.Console``)."""
    return Path(output) / "logs" / "events.jsonl"


def _restore(run, step_fn, data, ckpt, config):
    from llama_model import LlamaConfig
    from llama_train.checkpoint import TrainerState

    strategy = run.strategy
    fresh = TrainerState(global_batch_size=run.batch_size, seed=run.options.training.seed,
                         strategy=str(strategy), world_size=strategy.world_size,
                         data_fingerprint=data.fingerprint, seq_len=run.seq_len,
                         init_from=run.init_source)  # fmt: skip
    if run.resume is None:
        return fresh, None
    path = Path(run.resume)
    saved = LlamaConfig.from_json(str(path / "config.json"))
    if saved != config:
        raise TrainError(
            f"--resume {path}: the checkpoint's model config differs from --model-config"
        )
    previous = TrainerState.read(path)
    if previous.data_fingerprint != data.fingerprint:
        raise TrainError(
            f"--resume {path}: the data order differs from the checkpoint's (data, --split, --seq-len, "
            "--seed or --max-epochs changed)"
        )
    tensors = step_fn.checkpoint_tensors(for_loading=True)
    state = ckpt.load(path, tensors)
    step_fn.loaded(tensors)
    state.strategy, state.world_size = str(strategy), strategy.world_size
    state.global_batch_size = run.batch_size
    return state, path


def _paddle_in_use() -> str:
    """Paddle's version and the workarounds of its defects in force in this process."""
    import paddle

    from llama_model import paddle_compat

    patches = paddle_compat.applied()
    return f"Paddle {paddle.__version__}, patches: {', '.join(patches) if patches else 'none'}"


def _initial_weights(run, reads: test_hooks.InitReads | None = None):
    """The --init-from weights the front process checked and recorded, or None (no --init-from, or
    a resume: the checkpoint's weights win). Refuses weights that changed since that check."""
    source = run.init_source
    if source is None or run.resume is not None:
        return None
    from llama_model import LlamaModelError
    from llama_model.pretrained import PretrainedWeights

    def open_weights():
        return PretrainedWeights.open(source["path"], layout=source["layout"])

    try:
        weights = reads.opened(open_weights) if reads is not None else open_weights()
    except LlamaModelError as exc:
        raise TrainError(f"--init-from: {exc}") from None
    if weights.record()["digest"] != source["digest"]:
        raise TrainError(
            f"--init-from {source['path']}: the weights changed after the run was checked "
            "(their headers differ); start the run again"
        )
    return weights


def run_worker(run, console=None, *, keep_stop_handlers: bool = False, progress=None) -> object:
    """Train the ``RunRecord`` ``run`` as this process's rank; returns the Trainer (its state says
    where it stopped).

    ``keep_stop_handlers``: leave the stop-signal handlers installed on return (a rank process
    that is about to exit: a repeated SIGTERM from the launcher must not kill it after its clean
    stop); a library caller gets its own handlers back. ``progress``: where the rank reports its
    phases (``hangwatch.ProgressReport``) when the front process watches it."""
    from llama_data import DataError
    from llama_model import LlamaConfig, LlamaModelError, ParallelModel
    from llama_train import model_setup
    from llama_train.checkpoint import CheckpointManager
    from llama_train.data import TrainData
    from llama_train.metrics import default_peak_tflops
    from llama_train.optimizer import build_optimizer
    from llama_train.options import parse_duration
    from llama_train.preemption import StopRequest
    from llama_train.progress import heartbeat
    from llama_train.reporting import Reporter, flat_hparams
    from llama_train.steps import build_step
    from llama_train.trainer import Trainer

    opts = run.options
    limit = opts.resilience.max_duration
    # first: a stop signal during the start-up is a stop after the first step, not a death
    stop = StopRequest(
        distributed=run.strategy.world_size > 1,
        deadline=run.deadline,
        limit_s=parse_duration(limit, "--max-duration") if limit else 0.0,
    )
    try:
        # the model config the front process checked, the strategy it built: nothing re-derived
        config = LlamaConfig.from_json(str(Path(run.output) / "config.json"))
        strategy = run.strategy
        dtype = model_setup.compute_dtype(opts.training.amp)
        recompute = opts.training.recompute_granularity if opts.training.recompute else None
        if progress is not None:
            # Paddle's rendezvous first, on its own: a failure in it is told apart (the front
            # process starts such a job again once, ``restarts``)
            from llama_model.parallel import init_distributed

            test_hooks.maybe_fail_rendezvous(rank_from_env(), Path(run.output) / "logs")
            init_distributed(strategy)
            progress("start-up", 0, 0)
        reads = test_hooks.init_reads()
        weights = _initial_weights(run, reads)
        reading = (
            f"reading the weights of {opts.model.init_from}" if weights is not None else "building"
        )
        with heartbeat(reading, console.line if console is not None and weights else None):
            pm = ParallelModel.build(
                config,
                strategy,
                seed=opts.training.seed,
                recompute=recompute,
                compute_dtype=dtype,
                weights=weights,
            )
        if reads is not None and weights is not None:
            reads.write(pm.rank)
        step_fn = build_step(run, pm, build_optimizer(pm, opts.optimizer))
        data = TrainData(run)
        data.check_enough(opts.training.max_steps)
        rank = pm.rank
        ckpt = CheckpointManager(run.output, rank, strategy.world_size, opts.checkpoint.keep_last,
                                 config, opts.model.tokenizer)  # fmt: skip
        state, resumed_from = _restore(run, step_fn, data, ckpt, config)
        metrics = None
        if rank == 0:
            hparams = flat_hparams(opts.flat())
            resume_step = state.step if resumed_from else None
            metrics = Reporter(run.output, opts.logging.report_to, resume_step, hparams)
        if rank != 0:
            console = None
        if console is not None:
            if resumed_from:
                where = f"resumed from {resumed_from} at step {state.step}"
            elif weights is not None:
                where = f"starting from the weights of {weights.path} ({weights.layout} layout)"
            else:
                where = "starting from scratch"
            console.line(
                f"{strategy} on {strategy.world_size} process(es), "
                f"{'compiled (--to-static)' if step_fn.compiled else 'eager'} step, global batch "
                f"{run.batch_size} × {run.seq_len} tokens, {data.num_samples:,} train samples; {where}; "
                f"{_paddle_in_use()}"
            )
        peak = opts.logging.peak_tflops
        if peak is None:
            peak = default_peak_tflops(dtype)
        trainer = Trainer(
            run,
            pm,
            step_fn,
            data,
            ckpt,
            state,
            console=console,
            metrics=metrics,
            stop=stop,
            peak_tflops=peak,
            progress=progress,
        )
        try:
            trainer.run()
        finally:
            if metrics is not None:
                metrics.close()
        if rank == 0:  # how it ended, for the front process: a clean stop or the last step
            marker = "preempted" if trainer.stopped_by_signal else "finished"
            (Path(run.output) / "logs").mkdir(parents=True, exist_ok=True)
            (Path(run.output) / "logs" / marker).write_text(f"{trainer.state.step}\n")
        if pm.distributed:
            import paddle.distributed as dist

            dist.barrier()  # rank 0 hosts the rendezvous store: nobody leaves before everyone is done
        return trainer
    except (LlamaModelError, DataError) as exc:
        raise TrainError(str(exc)) from None
    finally:
        if not keep_stop_handlers:
            stop.restore()


def _own_log(output: str, rank: int) -> None:
    """Send this process's stdout and stderr (Python's and native code's) to
    ``OUTPUT/logs/workerlog.<global rank>``: Paddle's launcher names its logs by local rank, which
    collide on a shared output across nodes."""
    path = Path(output) / "logs" / f"workerlog.{rank}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _supervised(run, rank: int):
    """Under llama-train's launcher: die with it, log under the global rank, join the run lock,
    report progress to the front's hang detection. Returns (the lock, the progress report), or
    (None, None) when no launcher started this process."""
    from llama_train import hangwatch, runlock, supervise

    launcher = os.environ.get(supervise.LAUNCHER_PID_ENV)
    if launcher is None:
        return None, None
    supervise.die_with_parent(signal.SIGKILL, int(launcher))
    _own_log(run.output, rank)
    progress = hangwatch.ProgressReport(Path(run.output) / "logs", rank)
    progress("rendezvous", 0, 0)
    return runlock.join_as_rank(run.output), progress


def main(argv: list[str] | None = None) -> None:
    # SIGUSR1 (save and stop) before the stop handlers exist: ignored rather than fatal
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    from llama_model.runtime import configure_runtime

    configure_runtime()  # first: MKL and libgomp read their settings when Paddle loads them
    from llama_train.console import Console
    from llama_train.run_record import RunRecord

    args = sys.argv[1:] if argv is None else argv
    run = RunRecord.read(args[0])
    rank = rank_from_env()
    # Registered before the pipeline transport's own, so it runs after it closed the sockets.
    if test_hooks.linger(rank):
        atexit.register(time.sleep, test_hooks.linger(rank))
    try:
        _lock, progress = _supervised(run, rank)  # the lock is held until the process exits
        console = Console(bar=False, events=events_file(run.output)) if rank == 0 else None
        run_worker(run, console, keep_stop_handlers=True, progress=progress)
        if progress is not None:
            progress.close()
        # Done (finished or stopped and saved): the launcher's repeated SIGTERMs must not kill the
        # process while it tears down. Ignored, since Python's finalisation resets handlers to
        # the default (death) but keeps SIG_IGN.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
    except Exception as exc:  # every failure is reported, then the rank exits
        sys.exit(_report(exc, run, rank))


def _report(exc: Exception, run, rank: int) -> int:
    """Write this rank's report of ``exc`` at once (before the teardown, which may outlast its
    peers'), then its line on stderr (the rank's log), a crash's traceback before it; returns the
    exit code."""
    from llama_train import supervise
    from llama_train.errors import classify

    raised_at = time.time()
    failure = classify(exc, run)
    run_id = os.environ.get(supervise.RUN_ID_ENV, "")
    report = supervise.RankReport(
        rank, failure.code, failure.message, raised_at, failure.consequence, run_id
    )
    supervise.write_report(Path(run.output) / "logs", report)  # a full disk may refuse it
    if failure.code == EXIT_CRASH:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"Error: {failure.message}", file=sys.stderr, flush=True)
    return failure.code


if __name__ == "__main__":
    main()

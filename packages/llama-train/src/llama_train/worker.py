"""One rank of a training job: ``python -m llama_train.worker OUTPUT/run_config.json``.

Started by paddle.distributed.launch (or called in-process for a one-process run). Builds this
rank's stage, the optimizer, the data order, restores a checkpoint when resuming, and runs the
loop. A user's mistake or a non-finite loss ends every rank with one line, also written to
``OUTPUT/logs/error.<rank>`` for the launcher to show.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from llama_ckpt.clikit import EXIT_NON_FINITE, EXIT_USER_ERROR
from llama_train.errors import NonFiniteLoss, TrainError, os_error_line


def rank_from_env() -> int:
    return int(os.environ.get("PADDLE_TRAINER_ID", "0"))


def error_file(output: str, rank: int) -> Path:
    return Path(output) / "logs" / f"error.{rank}"


def events_file(output: str) -> Path:
    """Rank 0's console lines as JSON lines, which the launcher relays (``console.Console``)."""
    return Path(output) / "logs" / "events.jsonl"


def _restore(cfg, step_fn, data, ckpt, config, strategy):
    from llama_model import LlamaConfig
    from llama_train.checkpoint import TrainerState, resolve_resume

    path = resolve_resume(cfg.resume, cfg.output)
    fresh = TrainerState(global_batch_size=cfg.batch_size, seed=cfg.seed, strategy=str(strategy),
                         world_size=strategy.world_size, data_fingerprint=data.fingerprint, seq_len=cfg.seq_len,
                         init_from=cfg.init_source)  # fmt: skip
    if path is None:
        return fresh, None
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
    state.global_batch_size = cfg.batch_size
    return state, path


def _paddle_in_use() -> str:
    """Paddle's version and the workarounds of its defects in force in this process."""
    import paddle

    from llama_model import paddle_compat

    patches = paddle_compat.applied()
    return f"Paddle {paddle.__version__}, patches: {', '.join(patches) if patches else 'none'}"


def _initial_weights(cfg):
    """The --init-from weights the front process checked and recorded, or None (no --init-from, or
    a resume: the checkpoint's weights win). Refuses weights that changed since that check."""
    from llama_train.checkpoint import resolve_resume

    source = cfg.init_source
    if source is None or resolve_resume(cfg.resume, cfg.output) is not None:
        return None
    from llama_model import LlamaModelError
    from llama_model.pretrained import PretrainedWeights

    try:
        weights = PretrainedWeights.open(source["path"], layout=source["layout"])
    except LlamaModelError as exc:
        raise TrainError(f"--init-from: {exc}") from None
    if weights.record()["digest"] != source["digest"]:
        raise TrainError(
            f"--init-from {source['path']}: the weights changed after the run was checked "
            "(their headers differ); start the run again"
        )
    return weights


def run_worker(cfg, console=None, *, keep_stop_handlers: bool = False) -> object:
    """Train as this process's rank; returns the Trainer (its state says where it stopped).

    ``keep_stop_handlers``: leave the stop-signal handlers installed on return (a rank process
    that is about to exit: a repeated SIGTERM from the launcher must not kill it after its clean
    stop); a library caller gets its own handlers back."""
    from llama_data import DataError
    from llama_model import LlamaModelError, ParallelModel
    from llama_train import model_setup
    from llama_train.checkpoint import CheckpointManager
    from llama_train.data import TrainData
    from llama_train.metrics import default_peak_tflops
    from llama_train.optimizer import build_optimizer
    from llama_train.preemption import StopRequest
    from llama_train.progress import heartbeat
    from llama_train.reporting import Reporter, flat_hparams
    from llama_train.steps import build_step
    from llama_train.trainer import Trainer

    stop = None
    try:
        config = model_setup.model_config(cfg)
        strategy = model_setup.strategy_of(cfg)
        dtype = model_setup.compute_dtype(cfg)
        recompute = cfg.recompute_granularity if cfg.recompute else None
        weights = _initial_weights(cfg)
        reading = f"reading the weights of {cfg.init_from}" if weights is not None else "building"
        with heartbeat(reading, console.line if console is not None and weights else None):
            pm = ParallelModel.build(
                config,
                strategy,
                seed=cfg.seed,
                recompute=recompute,
                compute_dtype=dtype,
                weights=weights,
            )
        stop = StopRequest(distributed=pm.distributed)
        step_fn = build_step(cfg, pm, build_optimizer(pm, cfg))
        data = TrainData(cfg)
        data.check_enough(cfg.max_steps)
        rank = pm.rank
        ckpt = CheckpointManager(
            cfg.output, rank, strategy.world_size, cfg.keep_last, config, cfg.tokenizer
        )
        state, resumed_from = _restore(cfg, step_fn, data, ckpt, config, strategy)
        metrics = None
        if rank == 0:
            hparams = flat_hparams(cfg.to_dict())
            metrics = Reporter(cfg, state.step if resumed_from else None, hparams)
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
                f"{cfg.batch_size} × {cfg.seq_len} tokens, {data.num_samples:,} train samples; {where}; "
                f"{_paddle_in_use()}"
            )
        peak = cfg.peak_tflops or default_peak_tflops(dtype)
        trainer = Trainer(
            cfg,
            pm,
            step_fn,
            data,
            ckpt,
            state,
            console=console,
            metrics=metrics,
            stop=stop,
            peak_tflops=peak,
        )
        try:
            trainer.run()
        finally:
            if metrics is not None:
                metrics.close()
        if rank == 0:  # how it ended, for the front process: a clean stop or the last step
            marker = "preempted" if trainer.stopped_by_signal else "finished"
            (Path(cfg.output) / "logs").mkdir(parents=True, exist_ok=True)
            (Path(cfg.output) / "logs" / marker).write_text(f"{trainer.state.step}\n")
        if pm.distributed:
            import paddle.distributed as dist

            dist.barrier()  # rank 0 hosts the rendezvous store: nobody leaves before everyone is done
        return trainer
    except (LlamaModelError, DataError) as exc:
        raise TrainError(str(exc)) from None
    finally:
        if stop is not None and not keep_stop_handlers:
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


def _supervised(cfg, rank: int):
    """Under llama-train's launcher: die with it, log under the global rank, join the run lock."""
    from llama_train import runlock, supervise

    launcher = os.environ.get(supervise.LAUNCHER_PID_ENV)
    if launcher is None:
        return None
    supervise.die_with_parent(signal.SIGKILL, int(launcher))
    _own_log(cfg.output, rank)
    return runlock.join_as_rank(cfg.output)


def main(argv: list[str] | None = None) -> None:
    from llama_model.runtime import configure_runtime

    configure_runtime()  # first: MKL and libgomp read their settings when Paddle loads them
    from llama_train.console import Console
    from llama_train.options import RunConfig

    args = sys.argv[1:] if argv is None else argv
    cfg = RunConfig.read(args[0])
    rank = rank_from_env()
    try:
        lock = _supervised(cfg, rank)  # noqa: F841 - held until the process exits
        console = Console(bar=False, events=events_file(cfg.output)) if rank == 0 else None
        run_worker(cfg, console, keep_stop_handlers=True)
        # Done (finished or stopped and saved): the launcher's repeated SIGTERMs must not kill the
        # process while it tears down. Ignored, since Python's finalisation resets handlers to
        # the default (death) but keeps SIG_IGN.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
    except (TrainError, NonFiniteLoss, OSError) as exc:
        code = EXIT_NON_FINITE if isinstance(exc, NonFiniteLoss) else EXIT_USER_ERROR
        if isinstance(exc, OSError):
            message = os_error_line(exc, cfg.output)
        else:
            message = str(exc).strip().splitlines()[0]
        record = {"code": code, "message": message, "time": time.time()}
        with contextlib.suppress(OSError):  # a full disk may refuse this too: stderr still has it
            path = error_file(cfg.output, rank)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record) + "\n")
        print(f"Error: {message}", file=sys.stderr, flush=True)
        sys.exit(code)


if __name__ == "__main__":
    main()

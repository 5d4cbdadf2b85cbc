"""The ``llama-train`` command: ``llama-train [run] OPTIONS`` trains, ``llama-train plot OUTPUT...`` draws.

``run`` is the default command, so ``llama-train --strategy dp2mp2pp2 ...`` trains. Every option of
``run`` is a field of ``options.RunConfig``; the click options are generated from those fields so
that the flags, the config file and ``run_config.json`` cannot drift apart.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import sys
from pathlib import Path

import click

from llama_ckpt.clikit import (
    EXIT_CRASH,
    EXIT_NON_FINITE,
    HELP_OPTIONS,
    Failure,
    default_command_group,
    quiet_third_party_warnings,
)
from llama_train.errors import NonFiniteLoss, TrainError, os_error_line
from llama_train.options import OPTIONS
from llama_train.version import __version__

PADDLE_MISSING = (
    "llama-train needs PaddlePaddle: pip install 'llama-train[cpu]' (CPU), or for a GPU "
    "pip install paddlepaddle-gpu==3.3.1 -i https://www.paddlepaddle.org.cn/packages/stable/cu126/"
)
# A rank ended by a stop signal the user sent, before it could stop cleanly.
_STOPPED = (-signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP)


@click.group(cls=default_command_group("run"), context_settings=HELP_OPTIONS)
@click.version_option(__version__, prog_name="llama-train")
def main() -> None:
    """Pretrain a LLaMA model with dp/mp/pp auto-parallel on PaddlePaddle.

    \b
    llama-train [run] --strategy dp2mp2pp2 --model-config tiny --data data/corpus \\
        --tokenizer tok.model --output out --max-steps 300 --lr 3e-3
    llama-train plot out
    """
    quiet_third_party_warnings()


def _option_for(name: str, f) -> click.Option:
    meta = f.metadata
    flag = "--" + name.replace("_", "-")
    kwargs: dict = {"default": None, "help": meta["help"]}
    if meta.get("flag"):
        return click.Option([f"{flag}/--no-{flag[2:]}"], default=None, help=meta["help"])
    if meta.get("multiple"):
        return click.Option([flag], multiple=True, help=meta["help"])
    if meta.get("choices"):
        kwargs["type"] = click.Choice(meta["choices"])
    elif meta.get("kind") == "floats":
        kwargs["type"] = str
    elif isinstance(f.default, bool):
        kwargs["type"] = bool
    elif isinstance(f.default, int) or "int" in str(f.type):
        kwargs["type"] = int
    elif isinstance(f.default, float) or "float" in str(f.type):
        kwargs["type"] = float
    if f.default is not None:
        kwargs["help"] += f"  [default: {f.default}]"
    return click.Option([flag], **kwargs)


def _with_run_options(command):
    for name, f in reversed(list(OPTIONS.items())):
        command.params.insert(0, _option_for(name, f))
    return command


@main.command("run")
@click.option(
    "--config",
    "config_file",
    default=None,
    help="A .toml or .json file of options (flags override it).",
)
def run_command(config_file, **flags):
    """Train: start the processes of the strategy and run the job to --max-steps.

    Writes OUTPUT/run_config.json (the resolved options), OUTPUT/metrics.jsonl, OUTPUT/logs/ and
    OUTPUT/checkpoints/. SIGTERM or Ctrl-C saves a checkpoint and exits cleanly; --resume auto
    continues from it.
    """
    if importlib.util.find_spec("paddle") is None:
        raise Failure(PADDLE_MISSING)
    from llama_model.runtime import configure_runtime

    configure_runtime()  # before Paddle loads (the checks below load it): see llama-model's runtime
    from llama_model import LlamaModelError
    from llama_model.paddle_compat import check_paddle_version

    try:
        check_paddle_version()
    except LlamaModelError as exc:
        raise Failure(str(exc)) from None
    try:
        prepared = _prepare(config_file, flags)
    except TrainError as exc:
        raise Failure(str(exc)) from None
    except OSError as exc:
        raise Failure(f"{exc.filename or 'a file'}: {exc.strerror or exc}") from None
    try:
        if prepared.removed_partial:
            click.echo(
                f"removed {prepared.removed_partial} partial checkpoint save(s) left by a failed run"
            )
        if prepared.init_ignored_for is not None:
            click.echo(
                f"--init-from ignored: resuming from {prepared.init_ignored_for}, which has the "
                "run's own weights"
            )
        if prepared.abandoned is not None:
            click.echo(
                f"resuming from an older checkpoint: the newer ones were moved to {prepared.abandoned}"
            )
        if prepared.cfg.launched:
            _run_launched(prepared)
        else:
            _run_here(prepared.cfg)
    finally:
        if prepared.lock is not None:
            prepared.lock.release()


_with_run_options(run_command)


def _prepare(config_file, flags):
    """The checked run (``preparation.Prepared``), its lock held."""
    from llama_train import options
    from llama_train.preparation import prepare

    file_values = options.read_config_file(config_file) if config_file else {}
    return prepare(options.resolve(file_values, flags), say=click.echo)


def _run_here(cfg) -> None:
    import logging

    from llama_train.console import Console
    from llama_train.worker import run_worker

    console = Console()
    # Paddle's checkpoint writer logs an INFO line per save to stderr; in a one-process run that is
    # the user's terminal (a launched rank's goes to its log).
    paddle_log = logging.getLogger("paddle.distributed.fleet.utils.log_util")
    level = paddle_log.level
    paddle_log.setLevel(logging.WARNING)
    try:
        trainer = run_worker(cfg, console)
    except TrainError as exc:
        raise Failure(str(exc)) from None
    except NonFiniteLoss as exc:
        raise Failure(str(exc), EXIT_NON_FINITE) from None
    except KeyboardInterrupt:
        raise Failure(
            "interrupted by a second Ctrl-C before a checkpoint was saved", EXIT_CRASH
        ) from None
    except OSError as exc:
        raise Failure(os_error_line(exc, cfg.output)) from None
    finally:
        console.close()
        paddle_log.setLevel(level)
    if trainer.stopped_by_signal:
        sys.exit(0)


def _first_error(logs: Path) -> dict | None:
    """The earliest of the ranks' one-line errors (``logs/error.<rank>``)."""
    records = []
    for path in logs.glob("error.*"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        records.append((record.get("time", 0.0), int(path.suffix[1:]), record))
    return min(records, key=lambda r: r[:2])[2] if records else None


def _run_launched(prepared) -> None:
    from llama_train.checkpoint import remove_partial_saves
    from llama_train.console import Console
    from llama_train.launcher import launcher_log, run_launched

    cfg = prepared.cfg
    out = Path(cfg.output)
    console = Console()
    try:
        result = run_launched(
            cfg, str(out / "run_config.json"), console, prepared.run_id, prepared.lock_fd
        )
    finally:
        console.close()
    logs = out / "logs"
    if (cfg.node_rank or 0) == 0:  # every rank has exited: a partial save is only partial now
        remove_partial_saves(out / "checkpoints")
    error = _first_error(logs)
    if error:
        raise Failure(error["message"], error["code"])
    if result.failed is None and ((logs / "preempted").exists() or (logs / "finished").exists()):
        return  # finished, or stopped by a signal to whichever process it came: saved, exit 0
    if result.signalled and (result.failed is None or result.failed.status in _STOPPED):
        raise Failure("interrupted before a checkpoint could be saved", EXIT_CRASH)
    if result.returncode < 0 and not result.signalled:
        raise Failure(
            f"Paddle's launcher was killed by signal {-result.returncode}; its ranks were stopped "
            f"(see {launcher_log(cfg)})",
            EXIT_CRASH,
        )
    if result.failed is not None:
        failed = result.failed
        log = logs / f"workerlog.{failed.rank}"
        raise Failure(
            f"rank {failed.rank} {failed.describe()}; the job was stopped (see {log})", EXIT_CRASH
        )
    if result.returncode != 0:
        raise Failure(
            f"the launcher exited with code {result.returncode} (see {launcher_log(cfg)})",
            EXIT_CRASH,
        )


@main.command("plot")
@click.argument("outputs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--png",
    default=None,
    help="Where to write the image [default: OUTPUT/curves.png for one run, ./curves.png for several].",
)
def plot_command(outputs, png):
    """Draw the loss (train, valid), learning-rate, tokens/s and memory curves of one or more runs."""
    from llama_train.plot import plot_runs

    try:
        path = plot_runs(list(outputs), png)
    except TrainError as exc:
        raise Failure(str(exc)) from None
    click.echo(f"wrote {path}")

"""The ``llama-train`` command: ``llama-train [run] OPTIONS`` trains, ``llama-train plot OUTPUT`` draws.

``run`` is the default command, so ``llama-train --strategy dp2mp2pp2 ...`` trains. Every option of
``run`` is a field of ``options.RunConfig``; the click options are generated from those fields so
that the flags, the config file and ``run_config.json`` cannot drift apart.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import click

from llama_train.errors import NonFiniteLoss, TrainError
from llama_train.options import FIELDS
from llama_train.version import __version__

PADDLE_MISSING = (
    "llama-train needs PaddlePaddle: pip install 'llama-train[cpu]' (CPU), or for a GPU "
    "pip install paddlepaddle-gpu==3.3.1 -i https://www.paddlepaddle.org.cn/packages/stable/cu126/"
)
EXIT_CRASH = 1
EXIT_USER_ERROR = 2
EXIT_NON_FINITE = 3


class _Failure(click.ClickException):
    """One line, ``Error: ...``, and the exit code of its kind (2 for a user's mistake)."""

    def __init__(self, message: str, code: int = EXIT_USER_ERROR):
        super().__init__(message)
        self.exit_code = code


class _DefaultGroup(click.Group):
    """A group whose default command is ``run``: ``llama-train --strategy ...`` = ``llama-train run ...``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llama-train")
def main() -> None:
    """Pretrain a LLaMA model with dp/mp/pp auto-parallel on PaddlePaddle.

    \b
    llama-train [run] --strategy dp2mp2pp2 --model-config tiny --data data/corpus \\
        --tokenizer tok.model --output out --max-steps 300 --lr 3e-3
    llama-train plot out
    """


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
    for name, f in reversed(list(FIELDS.items())):
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
        raise _Failure(PADDLE_MISSING)
    try:
        cfg = _prepare(config_file, flags)
    except TrainError as exc:
        raise _Failure(str(exc)) from None
    if cfg.launched:
        _run_launched(cfg)
    else:
        _run_here(cfg)


_with_run_options(run_command)


def _prepare(config_file, flags):
    from llama_train import options
    from llama_train.preparation import prepare

    file_values = options.read_config_file(config_file) if config_file else {}
    return prepare(options.resolve(file_values, flags))


def _run_here(cfg) -> None:
    from llama_train.console import Console
    from llama_train.worker import run_worker

    console = Console()
    try:
        trainer = run_worker(cfg, console)
    except TrainError as exc:
        raise _Failure(str(exc)) from None
    except NonFiniteLoss as exc:
        raise _Failure(str(exc), EXIT_NON_FINITE) from None
    except KeyboardInterrupt:
        raise _Failure(
            "interrupted by a second Ctrl-C before a checkpoint was saved", EXIT_CRASH
        ) from None
    finally:
        console.close()
    if trainer.stopped_by_signal:
        sys.exit(0)


def _run_launched(cfg) -> None:
    from llama_train.console import Console
    from llama_train.launcher import run_launched

    out = Path(cfg.output)
    console = Console()
    try:
        result = run_launched(cfg, str(out / "run_config.json"), console)
    finally:
        console.close()
    errors = sorted((out / "logs").glob("error.*"), key=lambda p: int(p.suffix[1:]))
    if errors:
        record = json.loads(errors[0].read_text())
        raise _Failure(record["message"], record["code"])
    if result.signalled:
        if (out / "logs" / "preempted").exists():
            return
        raise _Failure("interrupted before a checkpoint could be saved", EXIT_CRASH)
    if result.returncode != 0:
        rank = f"rank {result.failed_rank}" if result.failed_rank is not None else "a rank"
        code = result.failed_code if result.failed_code is not None else result.returncode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        log = (
            out
            / "logs"
            / (
                f"workerlog.{result.failed_rank}"
                if result.failed_rank is not None
                else "launcher.log"
            )
        )
        raise _Failure(f"{rank} {how}; the job was stopped (see {log})", EXIT_CRASH)


@main.command("plot")
@click.argument("output", type=click.Path(file_okay=False))
@click.option("--png", default=None, help="Where to write the image [default: OUTPUT/curves.png].")
def plot_command(output, png):
    """Draw the loss (train, valid) and learning-rate curves of a run to a PNG."""
    from llama_train.plot import plot_run

    try:
        path = plot_run(output, png)
    except TrainError as exc:
        raise _Failure(str(exc)) from None
    click.echo(f"wrote {path}")

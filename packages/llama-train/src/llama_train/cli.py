"""The ``llama-train`` command: ``llama-train [run] OPTIONS`` trains, ``llama-train plot OUTPUT...`` draws.

``run`` is the default command, so ``llama-train --strategy dp2mp2pp2 ...`` trains. Every option of
``run`` is a field of a section of ``options.RunConfig``; the click options are generated from those
fields (their types from the annotations, ``options.Kind``) so that the flags, the config file and
``run_config.json`` cannot drift apart, and ``--help`` lists them under their sections.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
import time
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
from llama_train.errors import NonFiniteLoss, TrainError, classify
from llama_train.options import OPTIONS, SECTIONS, OptionSpec
from llama_train.plan.command import plan_options
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


def _option_for(spec: OptionSpec) -> click.Option:
    """The flag of an option. Its type comes from the option's ``Kind``; every default is None
    here (an unset flag overrides nothing: the defaults are the sections')."""
    text = spec.rule.help
    if spec.kind.base is bool:
        return click.Option([f"{spec.flag}/--no-{spec.flag[2:]}"], default=None, help=text)
    if spec.kind.sequence and spec.kind.base is str:  # repeated: --data A --data B
        return click.Option([spec.flag], multiple=True, help=text)
    if spec.kind.sequence:  # numbers in one string, "0.3,0.7", coerced by the Kind
        kind = click.STRING
    elif spec.rule.choices:
        kind = click.Choice(spec.rule.choices)
    else:
        kind = {str: click.STRING, int: click.INT, float: click.FLOAT}[spec.kind.base]
    if spec.default not in (None, ()):
        text += f"  [default: {spec.default}]"
    return click.Option([spec.flag], type=kind, default=None, help=text)


class SectionedCommand(click.Command):
    """A command whose ``--help`` lists the options of each section under its own heading."""

    def format_options(self, ctx, formatter) -> None:
        groups: dict[str, list[tuple[str, str]]] = {"Options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            spec = OPTIONS.get(param.name)
            title = "Options" if spec is None else section_title(spec.section)
            groups.setdefault(title, []).append(record)
        for title, records in groups.items():
            with formatter.section(title):
                formatter.write_dl(records)


def section_title(section: str) -> str:
    """``--help``'s heading of a section: its table in a config file, and its name (the first
    words of the section's docstring)."""
    doc = (SECTIONS[section].__doc__ or section).strip().splitlines()[0]
    return f"[{section}] {doc.split(':')[0].rstrip('.')}"


def _with_run_options(command):
    for spec in reversed(list(OPTIONS.values())):
        command.params.insert(0, _option_for(spec))
    return command


@main.command("run", cls=SectionedCommand)
@click.option(
    "--config",
    "config_file",
    default=None,
    help="A .toml or .json file of options, one table per section (flags override it); "
    "OUTPUT/run_config.json of a run reruns it.",
)
@click.option(
    "--print-config",
    is_flag=True,
    default=False,
    help="Print the resolved configuration as sectioned TOML (a --config file) and train nothing.",
)
def run_command(config_file, print_config, **flags):
    """Train: start the processes of the strategy and run the job to --max-steps.

    Writes OUTPUT/run_config.json (the options by section and what they resolved to),
    OUTPUT/config.json, OUTPUT/metrics.jsonl, OUTPUT/logs/ and OUTPUT/checkpoints/. SIGTERM or
    Ctrl-C saves a checkpoint and exits cleanly; --resume auto continues from it.
    """
    started = time.time()  # --max-duration counts from here
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
        options = _options(config_file, flags)
        if print_config:
            from llama_train.preparation import check_options

            _, record = check_options(options)
            click.echo(record.to_toml(), nl=False)
            return
        from llama_train.preparation import prepare

        prepared = prepare(options, say=click.echo, started=started)
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
        if prepared.run.launched:
            _run_launched(prepared)
        else:
            _run_here(prepared.run)
    finally:
        if prepared.lock is not None:
            prepared.lock.release()


_with_run_options(run_command)


def _options(config_file, flags):
    """The run's options: defaults < the config file < the flags, checked (``options.resolve``)."""
    from llama_train.config_file import read_config_file
    from llama_train.options import resolve

    def note(line: str) -> None:
        click.echo(line, err=True)

    file_values = read_config_file(config_file, say=note) if config_file else {}
    return resolve(file_values, flags)


def _run_here(run) -> None:
    import logging

    from llama_model.paddle_compat import settings
    from llama_train.console import Console
    from llama_train.worker import run_worker

    console = Console()
    # Paddle's checkpoint writer logs an INFO line per save to stderr; in a one-process run that is
    # the user's terminal (a launched rank's goes to its log).
    paddle_log = settings.distributed_logger()
    level = paddle_log.level
    paddle_log.setLevel(logging.WARNING)
    try:
        trainer = run_worker(run, console)
    except TrainError as exc:
        raise Failure(str(exc)) from None
    except NonFiniteLoss as exc:
        raise Failure(str(exc), EXIT_NON_FINITE) from None
    except KeyboardInterrupt:
        raise Failure(
            "interrupted by a second Ctrl-C before a checkpoint was saved", EXIT_CRASH
        ) from None
    except OSError as exc:
        failure = classify(exc, run)
        raise Failure(failure.message, failure.code) from None
    finally:
        console.close()
        paddle_log.setLevel(level)
    if trainer.stopped_by_signal:
        sys.exit(0)


def _run_launched(prepared) -> None:
    from llama_train import restarts
    from llama_train.console import Console

    console = Console()
    try:
        console.line(prepared.run.nodes.describe())
        restarts.run_job(prepared, console.line, lambda p, attempt: _start(p, attempt, console))
    finally:
        console.close()


def _start(prepared, attempt: int, console):
    """One start of a launched job: its result, and the Failure it ended with (None: it finished
    or stopped cleanly)."""
    from llama_train.checkpoint import remove_partial_saves
    from llama_train.launcher import launcher_log, run_launched

    run = prepared.run
    out = Path(run.output)
    result = run_launched(
        run, str(out / "run_config.json"), console, prepared.run_id, prepared.lock_fd, attempt
    )
    if run.nodes.node_rank == 0:
        # every rank has exited: a partial save is only partial now
        remove_partial_saves(out / "checkpoints")
    return result, failure_line(result, out / "logs", launcher_log(run))


def failure_line(result, logs: Path, launcher_log: Path | None = None) -> Failure | None:
    """The one line (and exit code) a launched job ends with, or None when it finished or stopped
    cleanly: the blamed rank's own line when it failed by a user's mistake or a non-finite loss,
    else what failed and its log."""
    launcher_log = launcher_log or logs / "launcher.log"
    ended = (logs / "preempted").exists() or (logs / "finished").exists()
    if result.hang is not None and not ended:  # hung at its exit: its work was done and saved
        return Failure(f"the job hung: {result.hang.line()}; it was stopped", EXIT_CRASH)
    report = result.report  # what the blamed rank said about its failure, if it said anything
    if report is not None and report.code != EXIT_CRASH:  # a user's mistake, a non-finite loss
        return Failure(report.message, report.code)
    if (result.failed is None or result.hang is not None) and ended:
        return None  # finished, or stopped by a signal to whichever process it came: saved, exit 0
    if result.signalled and (result.failed is None or result.failed.status in _STOPPED):
        return Failure("interrupted before a checkpoint could be saved", EXIT_CRASH)
    if result.returncode < 0 and not result.signalled:
        return Failure(
            f"Paddle's launcher was killed by signal {-result.returncode}; its ranks were stopped "
            f"(see {launcher_log})",
            EXIT_CRASH,
        )
    if result.failed is not None:
        failed = result.failed
        log = logs / f"workerlog.{failed.rank}"
        what = f"failed: {report.message}" if report is not None else failed.describe()
        return Failure(f"rank {failed.rank} {what}; the job was stopped (see {log})", EXIT_CRASH)
    if result.returncode != 0:
        return Failure(
            f"the launcher exited with code {result.returncode} (see {launcher_log})", EXIT_CRASH
        )
    return None


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


@main.command("plan", cls=SectionedCommand)
@click.option("--config", "config_file", default=None, help="A .toml or .json file of options.")
@plan_options
def plan_command(config_file, **flags):
    """Predict each rank's memory and the step time of a layout before launching it.

    \b
    llama-train plan --strategy dp2mp2pp2 --model-config llama2-7b --seq-len 4096 \\
        --global-batch-size 64 --amp bf16 --device H100-80GB [--json]
    llama-train plan --strategy auto --devices 64 ... --device H100-80GB   (rank the layouts)
    llama-train plan --strategy dp2mp2 --model-config tiny --seq-len 64 --check
    """
    if importlib.util.find_spec("paddle") is None:
        raise Failure(PADDLE_MISSING)
    from llama_model.runtime import configure_runtime

    configure_runtime()
    from llama_train.plan.command import PLAN_FLAGS, run_plan

    plan_flags = {name: flags.pop(name) for name in PLAN_FLAGS}  # the rest are the run's options
    try:
        code = run_plan(config_file, flags, plan_flags)
    except TrainError as exc:
        raise Failure(str(exc)) from None
    except OSError as exc:
        raise Failure(f"{exc.filename or 'a file'}: {exc.strerror or exc}") from None
    sys.exit(code)


_with_run_options(plan_command)

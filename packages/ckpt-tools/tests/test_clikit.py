"""The commands' shared conventions: a default sub-command, and the exit code of each error kind."""

import click
from click.testing import CliRunner

from llama_ckpt.clikit import EXIT_NON_FINITE, Failure, default_command_group, user_errors


class Mistake(Exception):
    pass


@click.group(cls=default_command_group("go"))
@click.version_option("9.9", prog_name="tool")
def tool():
    """The group."""


@tool.command("go")
@click.option("--what", default="")
@user_errors(lambda: (Mistake,))
def go(what):
    if what == "mistake":
        raise Mistake("bad what")
    if what == "missing":
        with open("/nonexistent/file"):
            pass
    if what == "nan":
        raise Failure("loss is nan", EXIT_NON_FINITE)
    if what == "bug":
        raise KeyError("bug")
    click.echo(f"go {what}")


@tool.command("other")
def other():
    click.echo("other")


def test_default_command_and_exit_codes():
    runner = CliRunner()
    assert runner.invoke(tool, ["--what", "x"]).output == "go x\n"  # the default command
    assert runner.invoke(tool, ["go", "--what", "y"]).output == "go y\n"
    assert runner.invoke(tool, ["other"]).output == "other\n"
    assert "Commands:" in runner.invoke(tool, ["--help"]).output  # the group's own help
    assert runner.invoke(tool, ["--version"]).output == "tool, version 9.9\n"
    assert runner.invoke(tool, []).exit_code == 2  # no argument: the group's usage
    result = runner.invoke(tool, ["--what", "mistake"])
    assert (result.exit_code, result.output) == (2, "Error: bad what\n")
    result = runner.invoke(tool, ["--what", "missing"])
    assert (result.exit_code, result.output) == (
        2,
        "Error: No such file or directory (/nonexistent/file)\n",
    )
    result = runner.invoke(tool, ["--what", "nan"])
    assert (result.exit_code, result.output) == (3, "Error: loss is nan\n")
    result = runner.invoke(tool, ["--what", "bug"])  # a bug is not the user's: it propagates
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)


def clicks_own_error_line(command: click.Command, args: list[str], prog_name: str) -> str:
    """The ``Error:`` line click prints last for a plain command (usage, hint and a blank line
    first, when it knows the command): its wording changes between click versions, so the one-line
    form is compared to it."""
    result = CliRunner().invoke(command, args, prog_name=prog_name)
    lines = result.stderr.splitlines()
    assert result.exit_code == 2 and len(lines) in (1, 4) and lines[-1].startswith("Error: ")
    if len(lines) == 4:
        assert lines[0].startswith(f"Usage: {prog_name} ") and lines[1:3] == [
            f"Try '{prog_name} --help' for help.",
            "",
        ], lines
    return lines[-1]


def test_usage_errors_are_one_line_with_exit_code_2():
    runner = CliRunner()
    cases = [  # (arguments, the sub-command's own arguments, a word the error must name)
        (["--what"], ["--what"], "--what"),  # click 8.5 raises this one without a context
        (["go", "--wat", "x"], ["--wat", "x"], "--what"),  # "Did you mean --what?"
        (["--bogus"], ["--bogus"], "--bogus"),  # through the default command
        (["other", "extra"], None, "extra"),
    ]
    for args, own, word in cases:
        command = go if own is not None else other
        line = clicks_own_error_line(command, own or args[1:], f"tool {command.name}")
        result = runner.invoke(tool, args)
        assert (result.exit_code, result.stdout) == (2, ""), args
        end = "" if line.endswith((".", "?")) else "."  # click ends some messages without a stop
        assert result.stderr == f"{line}{end} Try 'tool {command.name} --help'.\n", args
        assert word in line


def test_llama_ckpt_usage_errors_are_one_line():
    from llama_ckpt.cli import main

    runner = CliRunner()
    for args, word in (
        (["merge", "--bogus", "a", "b"], "--bogus"),  # an unknown option
        (["inspect"], "PATH"),  # a missing argument
        (["export", "a", "b", "--layout", "torch"], "torch"),  # a bad choice
    ):
        command = main.commands[args[0]]
        line = clicks_own_error_line(command, args[1:], f"llama-ckpt {args[0]}")
        result = runner.invoke(main, args, prog_name="llama-ckpt")
        assert (result.exit_code, result.stdout) == (2, ""), args
        assert result.stderr == f"{line} Try 'llama-ckpt {args[0]} --help'.\n", args
        assert word in line
    result = runner.invoke(main, ["nosuch"], prog_name="llama-ckpt")  # an unknown command
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr.startswith("Error: ") and result.stderr.endswith(
        "'nosuch'. Try 'llama-ckpt --help'.\n"
    )
    assert len(result.stderr.splitlines()) == 1

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

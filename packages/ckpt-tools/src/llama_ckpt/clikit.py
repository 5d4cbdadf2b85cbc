"""What the project's commands share: exit codes, the one-line error (usage errors included), a
default sub-command, and third-party warnings kept off the user's terminal.

``llama-ckpt``, ``llama-train`` and ``llama-infer`` use this module (both upper packages depend on
this one); ``llama-data`` depends on nothing of the project and keeps the same codes and the same
one-line usage errors itself. The codes are documented in the root README::

    0  done            1  a crash, or a job stopped by a rank's failure
    2  a user's mistake (bad option, unreadable input, refused checkpoint): one line on stderr
    3  training stopped on a non-finite loss
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import click

EXIT_CRASH = 1
EXIT_USER_ERROR = 2
EXIT_NON_FINITE = 3

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}

# Third-party warnings that say nothing to the user of a command. Paddle 3.3.1 warns on import that
# it found no ccache, which matters only to someone compiling C++ operators.
_NOISE = (("No ccache found", r"paddle\.utils\.cpp_extension"),)


class Failure(click.ClickException):
    """``Error: MESSAGE`` on stderr and the exit code of its kind (2, a user's mistake, unless told)."""

    def __init__(self, message: str, code: int = EXIT_USER_ERROR):
        super().__init__(message)
        self.exit_code = code


def os_error_line(exc: OSError) -> str:
    """An OSError as the user should read it: what went wrong, and with which file."""
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def user_errors(types: Callable[[], tuple[type[BaseException], ...]]):
    """Decorate a command so that an exception of ``types()`` (a user's mistake) or an OSError
    (unreadable input, disk full) is one line and exit code 2, never a traceback. ``types`` is
    called when an error is caught, so a command can name an error type of a module it may never
    load."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if isinstance(exc, types()):
                    raise Failure(str(exc)) from None
                if isinstance(exc, OSError):
                    raise Failure(os_error_line(exc)) from None
                raise

        return wrapper

    return decorate


def one_line_usage_error(
    exc: click.UsageError, command_path: str, help_names: list[str] | tuple[str, ...] = ()
) -> Failure:
    """A usage error (unknown option, missing argument, bad value) as one ``Error:`` line, exit
    code 2, with the help hint click would print on lines of its own folded in (click prints the
    usage, the hint, a blank line and the error). ``command_path`` and ``help_names`` are used
    where the error carries no context (click raises some parse errors without one)."""
    message = " ".join(exc.format_message().split())
    if exc.ctx is not None:
        command_path, help_names = exc.ctx.command_path, exc.ctx.help_option_names
    if help_names:
        end = "" if message.endswith((".", "?", "!")) else "."
        message += f"{end} Try '{command_path} {max(help_names, key=len)}'."
    return Failure(message, EXIT_USER_ERROR)


# click >= 8.2 signals "no arguments: show the help" with a UsageError; the help stays whole.
_HELP_ON_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())


class Group(click.Group):
    """A command group whose usage errors, its own and its sub-commands', are one ``Error:`` line
    (``one_line_usage_error``): the groups of llama-ckpt, llama-train and llama-infer."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:  # the group's own options (sub-commands parse theirs inside invoke)
            return super().make_context(info_name, args, parent=parent, **extra)
        except _HELP_ON_NO_ARGS:
            raise
        except click.UsageError as exc:
            path = f"{parent.command_path} {info_name}" if parent else info_name or ""
            names = extra.get("help_option_names") or self.context_settings.get(
                "help_option_names", ["--help"]
            )
            raise one_line_usage_error(exc, path, names) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except _HELP_ON_NO_ARGS:
            raise
        except click.UsageError as exc:
            path = " ".join(filter(None, (ctx.command_path, ctx.invoked_subcommand)))
            raise one_line_usage_error(exc, path, ctx.help_option_names) from None


class DefaultCommandGroup(Group):
    """A group that runs ``default_command`` when the first argument names none of its commands:
    ``llama-train --strategy ...`` is ``llama-train run --strategy ...``. With no argument at all
    it shows its own help, and ``--help``/``--version`` stay the group's."""

    default_command = ""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in (*self.commands, *ctx.help_option_names, "--version"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


def default_command_group(default: str) -> type[DefaultCommandGroup]:
    return type(
        f"Default{default.title()}Group", (DefaultCommandGroup,), {"default_command": default}
    )


def quiet_third_party_warnings() -> None:
    """Inside a command: ignore the warnings in ``_NOISE`` while it runs (this process only; the
    libraries never touch the warning filters)."""
    click.get_current_context().with_resource(warnings.catch_warnings())
    for message, module in _NOISE:
        warnings.filterwarnings("ignore", message=message, category=UserWarning, module=module)

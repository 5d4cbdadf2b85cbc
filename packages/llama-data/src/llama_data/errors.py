"""The one exception type for a user's mistake (bad file, bad option, bad corpus).

The CLI turns a ``DataError`` into one line on stderr and exit code 2; anything else is a bug and
keeps its traceback.
"""


class DataError(Exception):
    """Bad input: the message is one line that tells the user what is wrong and where."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (a third-party library's may run to many)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

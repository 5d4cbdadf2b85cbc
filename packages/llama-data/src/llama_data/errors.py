"""The one exception type for a user's mistake (bad file, bad option, bad corpus).

The CLI turns a ``DataError`` into one line on stderr and exit code 2; anything else is a bug and
keeps its traceback.
"""


class DataError(Exception):
    """Bad input: the message is one line that tells the user what is wrong and where."""

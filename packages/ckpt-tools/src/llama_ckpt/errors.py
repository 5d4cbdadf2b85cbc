"""Errors the command line reports as one line (``Error: ...``, exit code 2)."""


class CheckpointError(Exception):
    """A checkpoint or model directory is missing, malformed or not what was asked for."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for something a checkpoint never needs (a function call, an unknown class)."""

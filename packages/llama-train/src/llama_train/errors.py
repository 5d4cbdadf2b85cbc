"""The package's exception types: each carries one line for the user."""


class TrainError(ValueError):
    """A user's mistake (bad option, data, layout or checkpoint): one line, exit code 2."""


def os_error_line(exc: OSError, where) -> str:
    """The one line of an OS error met while writing the run: the path (the error's own, else
    ``where``) and the cause."""
    return f"cannot write {exc.filename or where}: {exc.strerror or exc}"


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; training stops before anything is saved from that step."""

    def __init__(self, step: int, value: float, what: str = "loss"):
        super().__init__(
            f"non-finite {what} ({value}) at step {step}; stopped before updating the weights "
            "(lower --lr, raise --warmup-steps or check the data); the last good checkpoint is kept"
        )
        self.step = step

"""The package's one exception type for a user's mistake; the CLI prints it as one line, exit code 2."""


class InferError(ValueError):
    """A bad model directory, tokenizer, prompt or option, explained in one line."""

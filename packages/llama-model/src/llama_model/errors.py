"""The package's one exception type for a user's mistake (bad config, strategy or layout)."""


class LlamaModelError(ValueError):
    """A one-line, user-facing error: wrong config value, bad strategy string, unsupported layout."""

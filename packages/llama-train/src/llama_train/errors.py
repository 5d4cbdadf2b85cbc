"""The package's exception types: each carries one line for the user; and what a failed rank says
about its exception (:func:`classify`): the line, the exit code, and whether the failure is a
consequence of another process's (a connection a peer closed) rather than this rank's own."""

from __future__ import annotations

import errno
import os
import re
import socket
from dataclasses import dataclass

from llama_ckpt.clikit import EXIT_CRASH, EXIT_NON_FINITE, EXIT_USER_ERROR


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


# ------------------------------------------------------------------------ a rank's own failure
# A connection that failed: the other end died or went away (its rank, the job's store).
NETWORK_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ECONNRESET", "ECONNREFUSED", "ECONNABORTED", "EPIPE", "ETIMEDOUT", "ENOTCONN",
                 "EHOSTUNREACH", "ENETUNREACH", "ENETDOWN", "ENETRESET", "EHOSTDOWN")
    if hasattr(errno, name)
)  # fmt: skip
# Errors only a write meets.
WRITE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS", "EFBIG") if hasattr(errno, name)
)
# What a rank raises when a peer's process is gone: llama-model's pipeline transport ("pipeline
# peer rank 2: closed the connection", "no message from rank 2 in 1800 s", "cannot connect to rank
# 2 at ..."), gloo's pairs (".../pair.cc:589] Connection closed by peer", "Timed out waiting").
_PEER_GONE = re.compile(
    r"pipeline (?:peer|connection from) rank \d+|no (?:pipeline )?message from rank \d+"
    r"|cannot connect to rank \d+|connection (?:reset|closed|refused|aborted)|broken pipe"
    r"|pair\.cc|timed out",
    re.IGNORECASE,
)


def is_network_error(exc: BaseException) -> bool:
    """An OSError of a connection (reset, refused, broken pipe, timed out), not of a file."""
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
        return True
    return isinstance(exc, OSError) and exc.errno in NETWORK_ERRNOS


def is_peer_failure(exc: BaseException) -> bool:
    """The exception says that another process went away (a closed or reset connection, a
    collective that timed out): this rank failed because of another's failure."""
    return is_network_error(exc) or bool(_PEER_GONE.search(str(exc)))


def exception_line(exc: BaseException) -> str:
    """The line a traceback ends with, ``Type: message``, of the message's first line (Paddle's
    errors: the line after its "Error Message Summary", not the C++ stack before it)."""
    text = str(exc)
    summary = text.split("Error Message Summary:", 1)
    lines = [line.strip() for line in summary[-1].splitlines()]
    lines = [line for line in lines if line and set(line) != {"-"}]
    name = type(exc).__qualname__
    return f"{name}: {lines[0]}" if lines else name


@dataclass
class RankFailure:
    """What a rank says about its own failure: its one line, its exit code, and whether it is a
    consequence of another process's failure (then another rank is blamed where one failed)."""

    code: int
    message: str
    consequence: bool = False


def _under(path: str, roots: list[str]) -> bool:
    path = os.path.abspath(path)
    for root in roots:
        root = os.path.abspath(root)
        if path == root or path.startswith(root + os.sep) or path.startswith(root + "."):
            return True
    return False


def input_paths(run) -> list[str]:
    """What a rank of a ``RunRecord`` reads and never writes: the data prefixes (PREFIX.bin/.idx)
    and their index caches, the tokenizer, the --init-from weights, the checkpoint resumed."""
    opts = run.options
    paths = []
    try:
        from llama_train.data import blend_pairs

        prefixes = [prefix for _, prefix in blend_pairs(opts.data)]
    except Exception:  # a bad --data is refused before any rank runs
        prefixes = list(opts.data.data)
    paths += prefixes
    paths += [os.path.join(os.path.dirname(os.path.abspath(p)), "index-cache") for p in prefixes]
    for value in (opts.data.data_cache_dir, opts.model.tokenizer, opts.model.init_from, run.resume):
        if value and value != "byte":
            paths.append(value)
    if run.init_source:
        paths.append(run.init_source.get("path", ""))
    return [p for p in paths if p]


def classify(exc: BaseException, run) -> RankFailure:
    """The line and exit code of an exception that ends a rank (or a one-process run):

    * a user's mistake (TrainError): exit 2, its line; a non-finite loss: exit 3;
    * an OSError of a connection (reset, refused, broken pipe, timed out): a crash (exit 1) that
      follows from another process's, naming the connection where the error does;
    * an OSError only a write meets (full disk, quota, read-only file system, file too large), or
      one of a file in the run directory: ``cannot write PATH: CAUSE``, exit 2;
    * an OSError of a file the run reads (data, tokenizer, --init-from, the checkpoint resumed):
      ``cannot read PATH: CAUSE``, exit 2;
    * anything else: a crash (exit 1) with the exception's line; a consequence when it says a peer
      went away (llama-model's "pipeline connection from rank k closed", gloo's closed pairs).

    ``run``: the job's ``RunRecord`` (where its inputs and its run directory are).
    """
    if isinstance(exc, NonFiniteLoss):
        return RankFailure(EXIT_NON_FINITE, str(exc).strip().splitlines()[0])
    if isinstance(exc, TrainError):
        return RankFailure(EXIT_USER_ERROR, str(exc).strip().splitlines()[0])
    if isinstance(exc, OSError):
        cause = exc.strerror or str(exc) or type(exc).__name__
        if is_network_error(exc):
            where = f" ({exc.filename})" if exc.filename else ""
            return RankFailure(EXIT_CRASH, f"network connection failed{where}: {cause}", True)
        path = exc.filename
        if exc.errno in WRITE_ERRNOS:
            return RankFailure(EXIT_USER_ERROR, os_error_line(exc, run.output))
        if path is not None and _under(str(path), input_paths(run)):
            return RankFailure(EXIT_USER_ERROR, f"cannot read {path}: {cause}")
        if path is not None and run.output and _under(str(path), [run.output]):
            return RankFailure(EXIT_USER_ERROR, os_error_line(exc, run.output))
    return RankFailure(EXIT_CRASH, exception_line(exc), is_peer_failure(exc))

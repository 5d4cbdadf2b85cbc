"""One job per run directory: an advisory lock on ``OUTPUT/.lock``.

The front process takes the lock exclusively before it looks at the run directory's state, so two
jobs cannot both decide to resume from, or write into, the same directory. Once the job is checked
and about to launch, the holder's identity is written into the file and the lock is turned into a
shared one: Paddle's launcher inherits it (the same open file description) and every rank takes its
own shared lock at start-up. A second job asks for the exclusive lock and is refused while any
process of the first job is alive, orphans included. The kernel drops a lock when its last holder
dies, so there is no stale lock to guess about.

The lock is an open file description lock on Linux (``fcntl`` ``F_OFD_SETLK`` on the whole file):
like ``flock`` it belongs to the open file, so the launcher shares it by inheriting the
descriptor, and it is dropped when the last descriptor of that open file is closed; unlike
``flock``, whose conversion "is not guaranteed to be atomic: the existing lock is first removed,
and then a new lock is established" (flock(2)), it turns from exclusive into shared atomically,
as POSIX record locks do: a probe in that moment (another job, another node) never sees the run
free. A probe asks whether the lock is free (``F_OFD_GETLK``) without taking it. Elsewhere (no OFD
locks) it is a ``flock``.

Multi-node: node 0 holds the lock on the shared output; the other nodes only check that it is held
by node 0 of a job with the same ``--master`` (they wait for it a while, as they may start first).

File systems without locks (NFS without lockd answers ENOLCK): the job is refused in one line;
``LLAMA_TRAIN_NO_LOCK=1`` runs without the lock, with nothing to stop a second job.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import struct
import time
from pathlib import Path

from llama_train.errors import TrainError

LOCK_NAME = ".lock"
NO_LOCK_ENV = "LLAMA_TRAIN_NO_LOCK"
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)
# struct flock of 64-bit Linux: l_type, l_whence (short), l_start, l_len (off_t), l_pid, padding.
_FLOCK_STRUCT = "hhqqi4x"
USE_OFD = hasattr(fcntl, "F_OFD_SETLK") and struct.calcsize(_FLOCK_STRUCT) == 32
_OFD_TYPES = {"ex": getattr(fcntl, "F_WRLCK", 1), "sh": getattr(fcntl, "F_RDLCK", 0),
              "un": getattr(fcntl, "F_UNLCK", 2)}  # fmt: skip
_FLOCK_KINDS = {"ex": fcntl.LOCK_EX, "sh": fcntl.LOCK_SH, "un": fcntl.LOCK_UN}


def _lock(fd: int, kind: str) -> None:
    """Take (``"ex"``, ``"sh"``) or drop (``"un"``) this open file's lock on the whole file, without
    waiting: BlockingIOError if another open file holds a conflicting one. Holding the other kind
    already, the lock is converted (atomically with OFD locks)."""
    if not USE_OFD:
        fcntl.flock(fd, _FLOCK_KINDS[kind] | fcntl.LOCK_NB)
        return
    request = struct.pack(_FLOCK_STRUCT, _OFD_TYPES[kind], os.SEEK_SET, 0, 0, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):  # POSIX allows either for a conflict
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN)) from None
        raise


def _is_locked(fd: int) -> bool:
    """Whether another open file holds a lock that an exclusive one would conflict with. With OFD
    locks it asks without taking the lock; with ``flock`` it takes it for a moment."""
    if not USE_OFD:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    request = struct.pack(_FLOCK_STRUCT, _OFD_TYPES["ex"], os.SEEK_SET, 0, 0, 0)
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, request)
    return struct.unpack(_FLOCK_STRUCT, answer)[0] != _OFD_TYPES["un"]


def _describe(raw: bytes) -> str:
    try:
        return _describe_holder(json.loads(raw.decode("utf-8")))
    except (ValueError, UnicodeDecodeError):
        return _describe_holder({})


def _describe_holder(holder: dict) -> str:
    try:
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (KeyError, TypeError):
        return "a job that is still starting"


def _lock_retrying(fd: int, kind: str) -> None:
    # Without OFD locks, another node's probe (check_node0_holds) holds the lock for microseconds:
    # try a few times.
    for attempt in range(3):
        try:
            _lock(fd, kind)
            return
        except BlockingIOError:
            if attempt == 2:
                raise
            time.sleep(0.2)


def _read(fd: int) -> bytes:
    return os.pread(fd, 1 << 16, 0)


def _no_flock(path: Path, exc: OSError) -> TrainError:
    return TrainError(
        f"cannot lock {path} ({os.strerror(exc.errno)}: the file system has no file locks, e.g. NFS "
        f"without lockd); set {NO_LOCK_ENV}=1 to run without it, making sure no other job uses "
        "this output"
    )


class RunLock:
    """The front process's lock on a run directory (``acquire`` → ``publish`` → ``release``)."""

    def __init__(self, output: Path):
        self.path = output / LOCK_NAME
        self.fd: int | None = None
        self.created = False
        self.previous = b""  # the file's bytes before this job (restored by a refused start)
        self.disabled = os.environ.get(NO_LOCK_ENV) == "1"

    def acquire(self) -> None:
        """Exclusive, non-blocking; one line naming the holder if another job has it. Then the
        file is emptied until ``publish``: another node reads "still checking", not a stale
        holder."""
        if self.disabled:
            return
        while True:
            self.created = not self.path.exists()
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                _lock_retrying(self.fd, "ex")
            except BlockingIOError:
                holder = _describe(_read(self.fd))
                self._close(remove=False)
                raise TrainError(
                    f"{self.path.parent} is in use by another llama-train job ({holder}); wait for "
                    "it to end, stop it, or choose another --output"
                ) from None
            except OSError as exc:
                self._close(remove=self.created)
                if exc.errno in _NO_FLOCK:
                    raise _no_flock(self.path, exc) from None
                raise
            # A refused start that created the file removes it: a lock taken on the removed file
            # locks nothing, so check that the path still names this file.
            try:
                same = os.stat(self.path).st_ino == os.fstat(self.fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            self._close(remove=False)
        self.previous = _read(self.fd)
        os.ftruncate(self.fd, 0)

    def publish(self, run_id: str, master: str | None) -> int | None:
        """Write who holds the lock, then share it with the job's processes; returns the fd that
        the launcher must inherit (None without a lock)."""
        if self.fd is None:
            return None
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "run_id": run_id,
            "master": master,
        }
        data = (json.dumps(holder) + "\n").encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)
        try:  # OFD: atomic, never free in between; flock: another job may slip in, and wins
            _lock(self.fd, "sh")
        except BlockingIOError:
            self._close(remove=False)
            raise TrainError(f"{self.path.parent} was taken by another llama-train job") from None
        return self.fd

    def release(self, *, undo: bool = False) -> None:
        """Drop the lock; ``undo`` (a refused start) leaves the lock file as it found it: removed
        if this job created it, else its previous bytes written back."""
        if undo and self.fd is not None and not self.created:
            os.pwrite(self.fd, self.previous, 0)
        self._close(remove=undo and self.created)

    def _close(self, remove: bool) -> None:
        if self.fd is not None:
            if remove:
                self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


def join_as_rank(output: str) -> int | None:
    """A rank's shared lock on the run directory, held until the process exits (the fd is left
    open on purpose). Refuses to run if another job holds the directory exclusively."""
    if os.environ.get(NO_LOCK_ENV) == "1":
        return None
    path = Path(output) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # an in-process call without the front process (library use)
    try:
        _lock_retrying(fd, "sh")
    except BlockingIOError:
        holder = _describe(_read(fd))
        os.close(fd)
        raise TrainError(
            f"{output} is held exclusively by another llama-train job ({holder})"
        ) from None
    except OSError as exc:
        os.close(fd)
        if exc.errno in _NO_FLOCK:
            raise _no_flock(path, exc) from None
        raise
    return fd


def check_node0_holds(output: Path, master: str, wait_s: float = 120.0) -> dict:
    """On a node other than 0: the lock must be held by node 0 of the job with this ``--master``,
    checked and published (its holder record written). Returns that record."""
    if os.environ.get(NO_LOCK_ENV) == "1":
        return {}
    path = output / LOCK_NAME
    deadline = time.monotonic() + wait_s
    while True:
        held, holder = _held_by(path)
        if held and holder.get("master") == master and holder.get("run_id"):
            return holder
        if time.monotonic() > deadline:
            what = f"held by another job ({_describe_holder(holder)})" if held else "not held"
            raise TrainError(
                f"{path} is {what}: node 0 of this job (--master {master}) must start on the same "
                "shared --output"
            )
        time.sleep(0.5)


def _held_by(path: Path) -> tuple[bool, dict]:
    try:  # read-write: an exclusive record lock (and NFS's emulation of flock) needs it
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, {}
    except OSError as exc:
        raise TrainError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        try:
            held = _is_locked(fd)
        except OSError as exc:
            if exc.errno in _NO_FLOCK:
                raise _no_flock(path, exc) from None
            raise TrainError(f"cannot lock {path}: {exc.strerror or exc}") from None
        if not held:
            return False, {}
        try:
            return True, json.loads(_read(fd).decode("utf-8") or "{}")
        except ValueError:
            return True, {}
    finally:
        os.close(fd)

"""A heartbeat for long quiet work (checking a big corpus, building sample indices, reading the
weights of ``--init-from``): nothing if it ends within ``after`` seconds, otherwise a line then,
another every ``every`` seconds, and one when it is done, so a terminal is never silent long."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

PREFIX = "progress: "  # the launcher relays rank 0's lines that start with it


@contextlib.contextmanager
def heartbeat(
    what: str, say: Callable[[str], None] | None, after: float = 3.0, every: float = 10.0
) -> Iterator[None]:
    if say is None:
        yield
        return
    start = time.monotonic()
    done = threading.Event()
    spoke = threading.Event()

    def beat() -> None:
        wait = after
        while not done.wait(wait):
            say(f"{PREFIX}{what}... {time.monotonic() - start:.0f} s")
            spoke.set()
            wait = every

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        if spoke.is_set():
            say(f"{PREFIX}{what}: done in {time.monotonic() - start:.1f} s")

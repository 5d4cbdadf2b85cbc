"""What the user sees: log lines, under a progress bar when the output is a terminal.

The trainer (in a one-process run) and the launcher (relaying rank 0's lines in a launched one)
both talk through this, so a terminal gets a bar either way and a file or pipe gets plain lines.
A launched rank 0 also appends each line to ``OUTPUT/logs/events.jsonl`` (``{"text": ...}``), the
structured channel the launcher relays from: nothing reads the console output back.
"""

from __future__ import annotations

import json
import os
import re
import sys

STEP_LINE = re.compile(r"^step (\d+)/(\d+)\b")


class Console:
    def __init__(
        self, stream=None, bar: bool | None = None, events: str | os.PathLike | None = None
    ):
        self.stream = stream or sys.stdout
        self.use_bar = self.stream.isatty() if bar is None else bar
        self._bar = None
        self.events = events  # a JSON-lines file each line also goes to (launched rank 0)

    def line(self, text: str) -> None:
        if self.events is not None:
            with open(self.events, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        try:
            self._line(text)
        except OSError:  # the terminal went away (SIGHUP): the job goes on to its clean stop
            self.use_bar, self._bar = False, None
            self.stream = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process

    def _line(self, text: str) -> None:
        match = STEP_LINE.match(text)
        if match and self.use_bar:
            self._advance(int(match.group(1)), int(match.group(2)))
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _advance(self, step: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(
                total=total,
                initial=step,
                unit="step",
                file=self.stream,
                dynamic_ncols=True,
                leave=True,
            )
        self._bar.n = step
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

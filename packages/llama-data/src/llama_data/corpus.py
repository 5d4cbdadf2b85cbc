"""Raw-text corpora: finding the input files, cutting them into tasks, reading documents out of them.

Formats, chosen by file name:

- ``.jsonl``, ``.jsonl.zst``, ``.jsonl.gz``: one JSON object per line, the text under a key
  (``text`` by default). Blank lines are ignored.
- ``.parquet``, ``.arrow``: the text column of that name (``columnar``); a null is a bad record.
- ``.txt``: by ``txt_mode``: ``file`` (the whole file is one document), ``paragraph`` (documents
  separated by blank lines) or ``line`` (every non-blank line is a document).

A document whose text is empty or only whitespace is skipped and counted. ``plan_tasks`` is the one
place that cuts the input into tasks: plain ``.jsonl`` files into byte ranges at line starts,
Parquet and Arrow files into ranges of row groups or record batches, so that one large file is read
by several workers; small files are grouped. Compressed and ``.txt`` files are read whole.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from llama_data import columnar
from llama_data.errors import DataError
from llama_data.tokenizer import optional_import

KINDS = (".jsonl", ".jsonl.zst", ".jsonl.gz", *columnar.KINDS, ".txt")
TXT_MODES = ("file", "paragraph", "line")
DEFAULT_CHUNK_BYTES = 32 << 20
# Text read and tokenized at once: what a worker holds in memory (bar a single larger document).
BATCH_BYTES = 1 << 20
# With several workers, tasks shrink as the input runs out (remaining / (workers * this)), so that
# the workers finish together; never below _MIN_TASK_BYTES, whose overhead would show.
_TASKS_PER_WORKER = 4
_MIN_TASK_BYTES = 256 << 10
_PARAGRAPH_BREAK = re.compile(r"\r?\n[ \t\r]*\n")
_JSON_WS = " \t\r\n"
_scan_json = json.JSONDecoder().scan_once  # the C scanner: json.loads without its per-call overhead


@dataclass(frozen=True)
class InputFile:
    path: str
    kind: str  # one of KINDS
    size: int  # bytes on disk


@dataclass(frozen=True)
class FilePart:
    """What a task reads of one file: bytes ``[start, end)`` of a plain ``.jsonl``, units ``[start,
    end)`` (row groups, record batches) of a Parquet or Arrow file, or a whole file."""

    file: InputFile
    start: int = 0
    end: int | None = None  # None: to the end of the file
    disk_bytes: int | None = None  # its share of the file on disk (progress); None: the whole file

    @property
    def size(self) -> int:
        if self.disk_bytes is not None:
            return self.disk_bytes
        end = self.file.size if self.end is None else self.end
        return end - self.start


@dataclass(frozen=True)
class ReadTask:
    """A unit of work: parts of one or more files, in reading order."""

    index: int
    parts: tuple[FilePart, ...]

    @property
    def size(self) -> int:
        return sum(part.size for part in self.parts)


@dataclass(frozen=True)
class ReadOptions:
    text_key: str = "text"  # the jsonl key or the Parquet/Arrow column holding the text
    txt_mode: str = "file"
    skip_bad_lines: bool = False
    batch_bytes: int = BATCH_BYTES  # text read and tokenized at once


@dataclass
class ReadStats:
    documents: int = 0
    empty_documents: int = 0
    bad_lines: int = 0  # malformed jsonl lines and null Parquet/Arrow rows skipped
    first_bad_line: str | None = None  # "path:line: reason" of the first one skipped

    def add(self, other: ReadStats) -> None:
        self.documents += other.documents
        self.empty_documents += other.empty_documents
        self.bad_lines += other.bad_lines
        if self.first_bad_line is None:
            self.first_bad_line = other.first_bad_line


def kind_of(path: str | os.PathLike) -> str | None:
    name = os.fspath(path)
    for kind in sorted(KINDS, key=len, reverse=True):
        if name.endswith(kind):
            return kind
    return None


def find_input_files(specs: Sequence[str | os.PathLike]) -> list[InputFile]:
    """Expand files, directories (recursively) and glob patterns, keeping the order of ``specs``;
    files found in a directory or by a pattern come sorted by path."""
    paths: list[str] = []
    for spec in specs:
        spec = os.fspath(spec)
        if os.path.isdir(spec):
            found = sorted(str(p) for p in Path(spec).rglob("*") if p.is_file() and kind_of(p))
            if not found:
                raise DataError(f"{spec}: directory holds no input files ({', '.join(KINDS)})")
            paths.extend(found)
        elif os.path.isfile(spec):
            if not kind_of(spec):
                raise DataError(
                    f"{spec}: unsupported input file (expected one of {', '.join(KINDS)})"
                )
            paths.append(spec)
        elif glob.has_magic(spec):
            found = sorted(
                p for p in glob.glob(spec, recursive=True) if os.path.isfile(p) and kind_of(p)
            )
            if not found:
                raise DataError(f"{spec}: pattern matches no input files ({', '.join(KINDS)})")
            paths.extend(found)
        else:
            raise DataError(f"{spec}: no such file or directory")
    if not paths:
        raise DataError("no input files given")
    seen: set[str] = set()
    files = []
    for p in paths:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            files.append(InputFile(p, kind_of(p), os.path.getsize(p)))
    return files


def plan_tasks(
    files: Sequence[InputFile],
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    *,
    workers: int = 1,
    text_key: str = "text",
) -> list[ReadTask]:
    """Cut the input into tasks of at most ``chunk_bytes`` (a single document, row group or record
    batch may be larger), at document boundaries and in reading order.

    Parquet and Arrow files are checked here (readable, a string column ``text_key``), before
    anything is written. With several workers the tasks shrink towards the end of the input so that
    the workers finish together. Every document lies in exactly one task, whole, so the cut never
    changes the output: any ``workers`` writes the same bytes.
    """
    units = {
        f.path: columnar.list_units(f.path, f.kind, text_key)
        for f in files
        if f.kind in columnar.KINDS
    }
    total = sum(
        sum(u.text_bytes for u in units[f.path]) if f.path in units else f.size for f in files
    )
    planner = _TaskPlanner(total, workers, chunk_bytes)
    for f in files:
        if f.path in units:
            _plan_units(f, units[f.path], planner)
        elif f.kind == ".jsonl":
            _plan_lines(f, planner)
        else:
            planner.add(FilePart(f), f.size)
    return planner.finish()


class _TaskPlanner:
    """Fills tasks with parts up to a target size that shrinks as the input runs out."""

    def __init__(self, total: int, workers: int, chunk_bytes: int):
        self.remaining = total
        self.workers = workers
        self.chunk_bytes = max(1, chunk_bytes)
        self.tasks: list[ReadTask] = []
        self.parts: list[FilePart] = []
        self.filled = 0
        self.target = self._next_target()

    def _next_target(self) -> int:
        if self.workers <= 1:
            return self.chunk_bytes
        guided = self.remaining // (self.workers * _TASKS_PER_WORKER)
        return min(self.chunk_bytes, max(_MIN_TASK_BYTES, guided))

    def room(self) -> int:
        """Bytes the current task still takes."""
        return self.target - self.filled

    def add(self, part: FilePart, work: int, full: bool = False) -> None:
        """Add ``part`` (``work`` bytes) to the current task; ``full``: the next would not fit."""
        self.parts.append(part)
        self.filled += work
        self.remaining -= work
        if full or self.filled >= self.target:
            self._close()

    def _close(self) -> None:
        if self.parts:
            self.tasks.append(ReadTask(len(self.tasks), tuple(self.parts)))
        self.parts, self.filled = [], 0
        self.target = self._next_target()

    def finish(self) -> list[ReadTask]:
        self._close()
        return self.tasks


def _plan_lines(f: InputFile, planner: _TaskPlanner) -> None:
    """A plain ``.jsonl`` in byte ranges that end at line starts."""
    with open(f.path, "rb") as fh:
        start = 0
        while start < f.size:
            end = start + planner.room()
            if end < f.size:
                fh.seek(end)
                fh.readline()  # to the start of the next line
                end = fh.tell()
            end = min(end, f.size)
            planner.add(FilePart(f, start, end), end - start)
            start = end


def _plan_units(f: InputFile, units: list[columnar.Unit], planner: _TaskPlanner) -> None:
    """A Parquet or Arrow file in ranges of whole row groups or record batches; each range's share
    of the file on disk is in proportion to its text."""
    total_text = max(1, sum(u.text_bytes for u in units))
    text_before = disk_before = 0
    start = 0
    while start < len(units):
        room, end, work = planner.room(), start + 1, units[start].text_bytes
        while end < len(units) and work + units[end].text_bytes <= room:
            work += units[end].text_bytes
            end += 1
        text_before += work
        disk_end = f.size * text_before // total_text if end < len(units) else f.size
        planner.add(FilePart(f, start, end, disk_end - disk_before), work, full=end < len(units))
        disk_before = disk_end
        start = end


def iter_documents(
    task: ReadTask,
    options: ReadOptions,
    stats: ReadStats,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[list[str]]:
    """Yield the documents of ``task`` in batches of about ``options.batch_bytes`` of text (or one
    larger document), counting into ``stats``. ``on_progress(n)``: ``n`` more bytes of the input
    consumed."""
    for part in task.parts:
        if part.file.kind == ".txt":
            yield from _txt_documents(part, options, stats, on_progress)
        elif part.file.kind in columnar.KINDS:
            yield from _columnar_documents(part, options, stats, on_progress)
        else:
            yield from _jsonl_documents(part, options, stats, on_progress)


def iter_texts(
    files: Sequence[InputFile], options: ReadOptions, stats: ReadStats | None = None
) -> Iterator[str]:
    """Every document of ``files`` in order, one by one."""
    stats = ReadStats() if stats is None else stats
    for task in plan_tasks(files, text_key=options.text_key):
        for batch in iter_documents(task, options, stats):
            yield from batch


# -- plain text -----------------------------------------------------------------------------------
def _txt_documents(part: FilePart, options, stats, on_progress) -> Iterator[list[str]]:
    path = part.file.path
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {exc.start})") from None
    if options.txt_mode == "file":
        parts = [text]
    elif options.txt_mode == "paragraph":
        parts = [p.strip("\r\n") for p in _PARAGRAPH_BREAK.split(text)]
    elif options.txt_mode == "line":
        parts = [line.rstrip("\r") for line in text.split("\n")]
    else:
        raise DataError(f"unknown txt mode {options.txt_mode!r} (one of {', '.join(TXT_MODES)})")
    docs = _keep_nonempty(parts, stats)
    if on_progress:
        on_progress(len(raw))
    for i in range(0, len(docs), 1024):
        yield docs[i : i + 1024]


def _keep_nonempty(texts: list[str], stats: ReadStats) -> list[str]:
    docs = [t for t in texts if t and not t.isspace()]
    stats.empty_documents += len(texts) - len(docs)
    stats.documents += len(docs)
    return docs


@dataclass
class _BadRecords:
    """A malformed line or a null row: stops the run, or is counted under ``skip_bad_lines``."""

    options: ReadOptions
    stats: ReadStats
    what: str  # "lines" or "rows"

    def report(self, where: str, reason: str) -> None:
        message = f"{where}: {reason}"
        if not self.options.skip_bad_lines:
            raise DataError(f"{message} (--skip-bad-lines to skip such {self.what})")
        self.stats.bad_lines += 1
        if self.stats.first_bad_line is None:
            self.stats.first_bad_line = message


# -- Parquet and Arrow ----------------------------------------------------------------------------
def _columnar_documents(part: FilePart, options, stats, on_progress) -> Iterator[list[str]]:
    path, kind = part.file.path, part.file.kind
    bad = _BadRecords(options, stats, "rows")
    units = part.end - part.start
    done = 0  # units of the part whose bytes were reported

    def report_units(upto: int) -> None:
        nonlocal done
        if on_progress and upto > done:
            on_progress(part.size * upto // units - part.size * done // units)
        done = upto

    for piece in columnar.iter_text_slices(
        path, kind, options.text_key, part.start, part.end, options.batch_bytes
    ):
        report_units(piece.unit - part.start)
        texts = piece.texts
        if None in texts:
            for i, text in enumerate(texts):
                if text is None:
                    where = f"{path}: {columnar.unit_name(kind)} {piece.unit}, row {piece.first_row + i}"
                    bad.report(where, f"{options.text_key!r} is null")
            texts = [t for t in texts if t is not None]
        docs = _keep_nonempty(texts, stats)
        if docs:
            yield docs
    report_units(units)


# -- jsonl ----------------------------------------------------------------------------------------
def _byte_blocks(part: FilePart, block_bytes: int, on_progress) -> Iterator[bytes]:
    """The part's bytes, decompressed, in blocks; ``on_progress`` hears of the raw bytes consumed."""
    path = part.file.path
    with open(path, "rb") as raw:
        if part.file.kind == ".jsonl":
            raw.seek(part.start)
            remaining = part.size
            while remaining > 0:
                block = raw.read(min(block_bytes, remaining))
                if not block:
                    return
                remaining -= len(block)
                if on_progress:
                    on_progress(len(block))
                yield block
            return
        position = 0
        if part.file.kind == ".jsonl.gz":
            blocks = _gzip_blocks(path, raw, block_bytes)
        else:
            blocks = _zstd_blocks(path, raw, block_bytes)
        for block in blocks:
            if on_progress:
                now = raw.tell()
                on_progress(now - position)
                position = now
            yield block


def _gzip_blocks(path: str, raw, block_bytes: int) -> Iterator[bytes]:
    stream = gzip.GzipFile(fileobj=raw, mode="rb")
    while True:
        try:
            block = stream.read(block_bytes)
        except (OSError, EOFError) as exc:  # BadGzipFile, or a stream cut short
            raise DataError(f"{path}: cannot decompress ({exc})") from None
        if not block:
            return
        yield block


def _zstd_blocks(path: str, raw, block_bytes: int) -> Iterator[bytes]:
    # Frame by frame with decompressobj: zstandard's stream_reader returns a truncated last frame
    # as a silent end of file.
    zstd = optional_import("zstandard", "zstd", "reading .zst files")
    dctx = zstd.ZstdDecompressor()
    frame = dctx.decompressobj()
    in_frame = False
    while True:
        chunk = raw.read(block_bytes)
        if not chunk:
            break
        while chunk:
            try:
                out = frame.decompress(chunk)
            except zstd.ZstdError as exc:
                raise DataError(f"{path}: cannot decompress ({exc})") from None
            in_frame = True
            if out:
                yield out
            if frame.eof:  # the rest of the chunk starts the next frame
                chunk = frame.unused_data
                frame = dctx.decompressobj()
                in_frame = False
            else:
                chunk = b""
    if in_frame:
        raise DataError(f"{path}: cannot decompress (the last zstd frame is truncated)")


def _line_blocks(
    part: FilePart, block_bytes: int, on_progress
) -> Iterator[tuple[int, list[bytes]]]:
    """(number of lines before the block within the part, complete lines of the block)."""
    lines_before = 0
    tail = b""
    for block in _byte_blocks(part, block_bytes, on_progress):
        lines = (tail + block).split(b"\n")
        tail = lines.pop()
        if lines:
            yield lines_before, lines
            lines_before += len(lines)
    if tail:
        yield lines_before, [tail]


def _jsonl_documents(part: FilePart, options, stats, on_progress) -> Iterator[list[str]]:
    key = options.text_key
    bad = _BadRecords(options, stats, "lines")
    lines_before_part: int | None = None

    def report(line_in_part: int, reason: str) -> None:
        nonlocal lines_before_part
        # The lines before a part's start are counted only when a line has to be reported.
        if lines_before_part is None:
            lines_before_part = _count_newlines(part.file.path, part.start)
        bad.report(f"{part.file.path}:{lines_before_part + line_in_part + 1}", reason)

    for lines_before, lines in _line_blocks(part, options.batch_bytes, on_progress):
        try:
            texts = b"\n".join(lines).decode("utf-8").split("\n")
        except UnicodeDecodeError:
            texts = None  # decode line by line to find the culprit
        docs: list[str] = []
        empty = 0
        for i, raw_line in enumerate(lines):
            if texts is not None:
                line = texts[i]
            else:
                try:
                    line = raw_line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    report(lines_before + i, f"not valid UTF-8 (byte {exc.start} of the line)")
                    continue
            try:
                obj, end = _scan_json(line, 0)
            except StopIteration:
                if not line.strip(_JSON_WS):
                    continue  # blank line
                obj, end = _parse_slowly(line), len(line)
                if isinstance(obj, _Invalid):
                    report(lines_before + i, obj.reason)
                    continue
            except (ValueError, RecursionError):
                obj, end = _parse_slowly(line), len(line)
                if isinstance(obj, _Invalid):
                    report(lines_before + i, obj.reason)
                    continue
            if end != len(line) and line[end:].strip(_JSON_WS):
                column = len(line) - len(line[end:].lstrip(_JSON_WS)) + 1
                report(lines_before + i, f"invalid JSON (extra data at column {column})")
                continue
            if not isinstance(obj, dict):
                report(lines_before + i, f"expected a JSON object, got {type(obj).__name__}")
                continue
            text = obj.get(key)
            if not isinstance(text, str):
                reason = (
                    f"no key {key!r}"
                    if text is None and key not in obj
                    else f"{key!r} is not a string"
                )
                report(lines_before + i, reason)
                continue
            if not text or text.isspace():
                empty += 1
                continue
            docs.append(text)
        stats.empty_documents += empty
        stats.documents += len(docs)
        if docs:
            yield docs


@dataclass
class _Invalid:
    reason: str


def _parse_slowly(line: str):
    """json.loads for what the fast scanner refused: leading whitespace, or a real error to report."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        return _Invalid(f"invalid JSON ({exc.msg} at column {exc.colno})")
    except (ValueError, RecursionError) as exc:
        return _Invalid(f"invalid JSON ({exc})")


def _count_newlines(path: str, end: int) -> int:
    count = 0
    with open(path, "rb") as fh:
        while end > 0:
            block = fh.read(min(BATCH_BYTES, end))
            if not block:
                break
            count += block.count(b"\n")
            end -= len(block)
    return count

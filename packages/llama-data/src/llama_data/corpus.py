"""Raw-text corpora: finding the input files and reading documents out of them.

Formats, chosen by file name:

- ``.jsonl``, ``.jsonl.zst``, ``.jsonl.gz``: one JSON object per line, the text under a key
  (``text`` by default). Blank lines are ignored.
- ``.txt``: by ``txt_mode``: ``file`` (the whole file is one document), ``paragraph`` (documents
  separated by blank lines) or ``line`` (every non-blank line is a document).

A document whose text is empty or only whitespace is skipped and counted. Plain ``.jsonl`` files are
cut into byte ranges at line starts, so that one large file can be read by several workers; the
compressed formats and ``.txt`` files are read whole by one worker each.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llama_data.errors import DataError
from llama_data.tokenizer import optional_import

KINDS = (".jsonl", ".jsonl.zst", ".jsonl.gz", ".txt")
TXT_MODES = ("file", "paragraph", "line")
DEFAULT_CHUNK_BYTES = 32 << 20
_BLOCK_BYTES = 4 << 20
_PARAGRAPH_BREAK = re.compile(r"\r?\n[ \t\r]*\n")
_JSON_WS = " \t\r\n"
_scan_json = json.JSONDecoder().scan_once  # the C scanner: json.loads without its per-call overhead


@dataclass(frozen=True)
class InputFile:
    path: str
    kind: str  # one of KINDS
    size: int  # bytes on disk


@dataclass(frozen=True)
class ReadTask:
    """A unit of work: a whole file, or the byte range ``[start, end)`` of a plain ``.jsonl``."""

    index: int
    file: InputFile
    start: int = 0
    end: int | None = None  # None: to the end of the file

    @property
    def size(self) -> int:
        end = self.file.size if self.end is None else self.end
        return end - self.start


@dataclass(frozen=True)
class ReadOptions:
    json_key: str = "text"
    txt_mode: str = "file"
    skip_bad_lines: bool = False


@dataclass
class ReadStats:
    documents: int = 0
    empty_documents: int = 0
    bad_lines: int = 0
    first_bad_line: str | None = None  # "path:line: reason" of the first skipped line
    bytes_read: int = 0

    def add(self, other: ReadStats) -> None:
        self.documents += other.documents
        self.empty_documents += other.empty_documents
        self.bad_lines += other.bad_lines
        self.bytes_read += other.bytes_read
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
    files: Sequence[InputFile], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> list[ReadTask]:
    """Cut the input into tasks in reading order. The cut depends only on the files and
    ``chunk_bytes``, never on the number of workers, so every worker count writes the same output."""
    tasks: list[ReadTask] = []
    for f in files:
        if f.kind != ".jsonl" or f.size <= chunk_bytes:
            tasks.append(ReadTask(len(tasks), f))
            continue
        with open(f.path, "rb") as fh:
            start = 0
            while start < f.size:
                fh.seek(start + chunk_bytes)
                fh.readline()  # to the start of the next line
                end = min(fh.tell(), f.size)
                tasks.append(ReadTask(len(tasks), f, start, end))
                start = end
    return tasks


def iter_documents(
    task: ReadTask,
    options: ReadOptions,
    stats: ReadStats,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[list[str]]:
    """Yield the documents of ``task`` in batches of a few MiB of text, counting into ``stats``.

    ``on_progress(n)`` is told of every ``n`` bytes of the input file consumed.
    """
    if task.file.kind == ".txt":
        yield from _txt_documents(task, options, stats, on_progress)
    else:
        yield from _jsonl_documents(task, options, stats, on_progress)


def iter_texts(
    files: Sequence[InputFile], options: ReadOptions, stats: ReadStats | None = None
) -> Iterator[str]:
    """Every document of ``files`` in order, one by one."""
    stats = ReadStats() if stats is None else stats
    for task in plan_tasks(files):
        for batch in iter_documents(task, options, stats):
            yield from batch


# -- plain text -----------------------------------------------------------------------------------
def _txt_documents(task, options, stats, on_progress) -> Iterator[list[str]]:
    path = task.file.path
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
    stats.bytes_read += len(raw)
    if on_progress:
        on_progress(len(raw))
    for i in range(0, len(docs), 1024):
        yield docs[i : i + 1024]


def _keep_nonempty(texts: list[str], stats: ReadStats) -> list[str]:
    docs = [t for t in texts if t and not t.isspace()]
    stats.empty_documents += len(texts) - len(docs)
    stats.documents += len(docs)
    return docs


# -- jsonl ----------------------------------------------------------------------------------------
def _byte_blocks(task: ReadTask, on_progress) -> Iterator[bytes]:
    """The task's bytes, decompressed, in blocks; ``on_progress`` hears of the raw bytes consumed."""
    path = task.file.path
    with open(path, "rb") as raw:
        if task.file.kind == ".jsonl":
            raw.seek(task.start)
            remaining = task.size
            while remaining > 0:
                block = raw.read(min(_BLOCK_BYTES, remaining))
                if not block:
                    return
                remaining -= len(block)
                if on_progress:
                    on_progress(len(block))
                yield block
            return
        position = 0
        if task.file.kind == ".jsonl.gz":
            blocks = _gzip_blocks(path, raw)
        else:
            blocks = _zstd_blocks(path, raw)
        for block in blocks:
            if on_progress:
                now = raw.tell()
                on_progress(now - position)
                position = now
            yield block


def _gzip_blocks(path: str, raw) -> Iterator[bytes]:
    stream = gzip.GzipFile(fileobj=raw, mode="rb")
    while True:
        try:
            block = stream.read(_BLOCK_BYTES)
        except (OSError, EOFError) as exc:  # BadGzipFile, or a stream cut short
            raise DataError(f"{path}: cannot decompress ({exc})") from None
        if not block:
            return
        yield block


def _zstd_blocks(path: str, raw) -> Iterator[bytes]:
    # Frame by frame with decompressobj: zstandard's stream_reader returns a truncated last frame
    # as a silent end of file.
    zstd = optional_import("zstandard", "zstd", "reading .zst files")
    dctx = zstd.ZstdDecompressor()
    frame = dctx.decompressobj()
    in_frame = False
    while True:
        chunk = raw.read(_BLOCK_BYTES)
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


def _line_blocks(task: ReadTask, on_progress) -> Iterator[tuple[int, list[bytes]]]:
    """(number of lines before the block within the task, complete lines of the block)."""
    lines_before = 0
    tail = b""
    for block in _byte_blocks(task, on_progress):
        lines = (tail + block).split(b"\n")
        tail = lines.pop()
        if lines:
            yield lines_before, lines
            lines_before += len(lines)
    if tail:
        yield lines_before, [tail]


def _jsonl_documents(task, options, stats, on_progress) -> Iterator[list[str]]:
    key = options.json_key
    bad = _BadLines(task, options, stats)
    for lines_before, lines in _line_blocks(task, on_progress):
        stats.bytes_read += sum(map(len, lines)) + len(lines)
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
                    bad.report(lines_before + i, f"not valid UTF-8 (byte {exc.start} of the line)")
                    continue
            try:
                obj, end = _scan_json(line, 0)
            except StopIteration:
                if not line.strip(_JSON_WS):
                    continue  # blank line
                obj, end = _parse_slowly(line), len(line)
                if isinstance(obj, _Invalid):
                    bad.report(lines_before + i, obj.reason)
                    continue
            except (ValueError, RecursionError):
                obj, end = _parse_slowly(line), len(line)
                if isinstance(obj, _Invalid):
                    bad.report(lines_before + i, obj.reason)
                    continue
            if end != len(line) and line[end:].strip(_JSON_WS):
                column = len(line) - len(line[end:].lstrip(_JSON_WS)) + 1
                bad.report(lines_before + i, f"invalid JSON (extra data at column {column})")
                continue
            if not isinstance(obj, dict):
                bad.report(lines_before + i, f"expected a JSON object, got {type(obj).__name__}")
                continue
            text = obj.get(key)
            if not isinstance(text, str):
                reason = (
                    f"no key {key!r}"
                    if text is None and key not in obj
                    else f"{key!r} is not a string"
                )
                bad.report(lines_before + i, reason)
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


@dataclass
class _BadLines:
    task: ReadTask
    options: ReadOptions
    stats: ReadStats
    _first_line: int | None = field(default=None)

    def report(self, line_in_task: int, reason: str) -> None:
        where = f"{self.task.file.path}:{self._line_number(line_in_task)}: {reason}"
        if not self.options.skip_bad_lines:
            raise DataError(f"{where} (--skip-bad-lines to skip such lines)")
        self.stats.bad_lines += 1
        if self.stats.first_bad_line is None:
            self.stats.first_bad_line = where

    def _line_number(self, line_in_task: int) -> int:
        # Lines before a chunk's start are counted only when a line has to be reported.
        if self._first_line is None:
            self._first_line = 1 + _count_newlines(self.task.file.path, self.task.start)
        return self._first_line + line_in_task


def _count_newlines(path: str, end: int) -> int:
    count = 0
    with open(path, "rb") as fh:
        while end > 0:
            block = fh.read(min(_BLOCK_BYTES, end))
            if not block:
                break
            count += block.count(b"\n")
            end -= len(block)
    return count

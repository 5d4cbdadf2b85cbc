"""Parquet and Arrow inputs: the text column of ``.parquet`` files and of ``.arrow`` files (the
Arrow IPC stream files of a ``datasets.Dataset.save_to_disk`` directory, or Arrow IPC/Feather files).

Read with pyarrow (the optional extra ``llama-data[parquet]``) and never whole: a Parquet file row
group by row group, an Arrow file record batch by record batch, each in slices of a few MiB of text.
Row groups and record batches are the *units* that ``corpus.plan_tasks`` deals out to workers, so
that one large file is read by several. The schema is checked when the units are listed, in the
main process before anything is written: a missing text column or one that does not hold strings is
refused there.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass

from llama_data.errors import DataError, first_line
from llama_data.tokenizer import optional_import

PARQUET = ".parquet"
ARROW = ".arrow"
KINDS = (PARQUET, ARROW)
_READ_BUFFER_BYTES = 1 << 20
_ARROW_FILE_MAGIC = b"ARROW1"  # the random-access IPC file format (Feather v2); else a stream


@dataclass(frozen=True)
class Unit:
    """A row group (Parquet) or a record batch (Arrow)."""

    rows: int
    text_bytes: int  # the text column's size in memory: how much work the unit holds


@dataclass(frozen=True)
class TextSlice:
    """Consecutive rows of the text column: ``texts[i]`` is row ``first_row + i`` of ``unit``."""

    unit: int
    first_row: int
    texts: list  # str, or None for a null


def unit_name(kind: str) -> str:
    return "row group" if kind == PARQUET else "record batch"


def list_units(path: str, kind: str, text_key: str) -> list[Unit]:
    """The row groups or record batches of a file, once its text column has been checked."""
    pa = _pyarrow()
    units: list[Unit] = []
    try:
        if kind == PARQUET:
            with pa.parquet.ParquetFile(path) as parquet:
                column = _text_column(path, parquet.schema_arrow, text_key)
                meta = parquet.metadata
                for g in range(meta.num_row_groups):
                    group = meta.row_group(g)
                    units.append(Unit(group.num_rows, group.column(column).total_uncompressed_size))
            return units
        arrow = _ArrowFile(pa, path)
        column = _text_column(path, arrow.schema, text_key)
        for batch in arrow.batches:
            # Buffer sizes only: no text is read here.
            units.append(Unit(batch.num_rows, batch.column(column).get_total_buffer_size()))
        return units
    except (pa.ArrowException, OSError, ValueError) as exc:  # ValueError: an empty file
        where = f"{unit_name(kind)} {len(units)}: " if kind == ARROW and units else ""
        kind_name = "Parquet" if kind == PARQUET else "Arrow"
        raise DataError(
            f"{path}: {where}not a readable {kind_name} file ({first_line(exc)})"
        ) from None


def iter_text_slices(
    path: str, kind: str, text_key: str, start: int, end: int, slice_bytes: int
) -> Iterator[TextSlice]:
    """The text column of units ``[start, end)``, in slices of about ``slice_bytes`` of text."""
    pa = _pyarrow()
    unit = start
    try:
        if kind == PARQUET:
            # Pages streamed through a small buffer: pyarrow's default reads a row group's whole
            # column chunk into memory first.
            with pa.parquet.ParquetFile(
                path, buffer_size=_READ_BUFFER_BYTES, pre_buffer=False
            ) as parquet:
                column = parquet.schema_arrow.get_field_index(text_key)
                for unit in range(start, end):
                    group = parquet.metadata.row_group(unit)
                    size = group.column(column).total_uncompressed_size
                    first = 0
                    for batch in parquet.iter_batches(
                        batch_size=_rows_per_slice(group.num_rows, size, slice_bytes),
                        row_groups=[unit],
                        columns=[text_key],
                        use_threads=False,  # one core per worker
                    ):
                        yield TextSlice(unit, first, batch.column(0).to_pylist())
                        first += batch.num_rows
            return
        arrow = _ArrowFile(pa, path)
        column = arrow.schema.get_field_index(text_key)
        for unit, batch in enumerate(arrow.batches):
            if unit >= end:
                return
            if unit < start:
                continue  # a header read: the batch's data stays on disk
            texts = batch.column(column)
            rows = _rows_per_slice(len(texts), texts.get_total_buffer_size(), slice_bytes)
            for first in range(0, len(texts), rows):
                piece = TextSlice(unit, first, texts.slice(first, rows).to_pylist())
                arrow.release()
                yield piece
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(
            f"{path}: {unit_name(kind)} {unit}: cannot read ({first_line(exc)})"
        ) from None


def _pyarrow():
    pa = optional_import("pyarrow", "parquet", "reading Parquet and Arrow files")
    import pyarrow.ipc
    import pyarrow.parquet  # noqa: F401  (both part of pyarrow: present whenever it is)

    return pa


def _rows_per_slice(rows: int, text_bytes: int, slice_bytes: int) -> int:
    return max(1, min(rows, rows * slice_bytes // max(text_bytes, 1)))


def _text_column(path: str, schema, text_key: str) -> int:
    """The index of the text column; DataError unless it exists and holds strings."""
    pa = _pyarrow()
    index = schema.get_field_index(text_key)
    if index < 0:
        names = ", ".join(repr(n) for n in schema.names[:8])
        more = ", ..." if len(schema.names) > 8 else ""
        raise DataError(f"{path}: no column {text_key!r} (columns: {names}{more}; see --text-key)")
    value_type = schema.field(index).type
    if pa.types.is_dictionary(value_type):
        value_type = value_type.value_type
    is_string_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow >= 16
    if not (
        pa.types.is_string(value_type)
        or pa.types.is_large_string(value_type)
        or is_string_view(value_type)
    ):
        raise DataError(
            f"{path}: column {text_key!r} holds {schema.field(index).type}, not strings"
        )
    return index


class _ArrowFile:
    """An Arrow IPC file or stream, memory-mapped: a record batch that is skipped or only measured
    costs a header read, not its data. ``release()`` returns the pages read so far, so that a
    worker's memory does not grow with the part of the file it has read."""

    def __init__(self, pa, path: str):
        with open(path, "rb") as fh:
            # Closed by the garbage collector once pyarrow's buffers over it are gone.
            self._mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        source = pa.BufferReader(pa.py_buffer(self._mapped))
        if self._mapped[: len(_ARROW_FILE_MAGIC)] == _ARROW_FILE_MAGIC:
            reader = pa.ipc.open_file(source)
            self.batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            reader = pa.ipc.open_stream(source)
            self.batches = iter(reader)
        self.schema = reader.schema

    def release(self) -> None:
        if _DONTNEED is not None:
            self._mapped.madvise(_DONTNEED)


_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)  # not on Windows

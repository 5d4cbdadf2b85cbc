"""Parquet and Arrow inputs: read as jsonl is, cut into tasks by row group and record batch, and
every kind of bad file refused in one line naming the file (and the row group where there is one)."""

from __future__ import annotations

import itertools
import re
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpus_files import TEXTS, save_to_disk, write_arrow, write_jsonl, write_parquet

from llama_data import DataError
from llama_data.corpus import ReadOptions, ReadStats, find_input_files, iter_texts, plan_tasks

NONEMPTY = [t for t in TEXTS if t.strip()]


def read_all(specs, **options):
    stats = ReadStats()
    texts = list(iter_texts(find_input_files(specs), ReadOptions(**options), stats))
    return texts, stats


@pytest.mark.parametrize("layout", ["jsonl", "parquet", "arrow stream", "arrow file", "datasets"])
def test_every_format_reads_the_same_documents(tmp_path, layout):
    if layout == "jsonl":
        spec = write_jsonl(tmp_path / "t.jsonl", TEXTS)
    elif layout == "parquet":
        spec = write_parquet(tmp_path / "t.parquet", TEXTS, rows_per_group=37)
    elif layout == "arrow stream":
        spec = write_arrow(tmp_path / "t.arrow", TEXTS, rows_per_batch=37)
    elif layout == "arrow file":
        spec = write_arrow(tmp_path / "t.arrow", TEXTS, rows_per_batch=37, stream=False)
    else:
        spec = save_to_disk(tmp_path / "saved", TEXTS, num_shards=3)
    texts, stats = read_all([spec])
    assert texts == NONEMPTY
    assert (stats.documents, stats.empty_documents, stats.bad_lines) == (298, 2, 0)


def test_a_save_to_disk_directory_is_its_arrow_files_in_order(tmp_path):
    save_to_disk(tmp_path / "saved", TEXTS, num_shards=3)
    files = find_input_files([tmp_path / "saved"])
    assert [f.path.rsplit("/", 1)[1] for f in files] == [
        f"data-0000{i}-of-00003.arrow" for i in range(3)
    ]
    assert {f.kind for f in files} == {".arrow"}


def test_other_text_column(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", ["a", "b"], key="content")
    assert read_all([path], text_key="content")[0] == ["a", "b"]


@pytest.mark.parametrize("kind", [".parquet", ".arrow"])
def test_tasks_cover_each_row_group_or_batch_once(tmp_path, kind):
    path = tmp_path / f"t{kind}"
    if kind == ".parquet":
        write_parquet(path, TEXTS, rows_per_group=20)  # 15 row groups
    else:
        write_arrow(path, TEXTS, rows_per_batch=20)  # 15 record batches
    tasks = plan_tasks(find_input_files([path]), chunk_bytes=1500)
    parts = [part for task in tasks for part in task.parts]
    assert len(tasks) == len(parts) > 3  # one file: one range of it per task
    assert parts[0].start == 0 and parts[-1].end == 15
    assert all(a.end == b.start and a.start < a.end for a, b in itertools.pairwise(parts))
    assert sum(p.size for p in parts) == path.stat().st_size  # what the progress bar counts


def test_one_file_is_split_for_several_workers(tmp_path):
    texts = [f"{i} " + "x" * 1000 for i in range(4000)]  # 4 MB in 80 row groups
    path = write_parquet(tmp_path / "t.parquet", texts, rows_per_group=50)
    files = find_input_files([path])
    assert len(plan_tasks(files, workers=1)) == 1
    tasks = plan_tasks(files, workers=2)
    # Smaller towards the end (down to 256 KiB), so that the workers finish together.
    groups = [task.parts[0].end - task.parts[0].start for task in tasks]
    assert groups == sorted(groups, reverse=True) and groups[0] > 2 * groups[-1]
    assert sum(groups) == 80


def test_null_rows_name_the_row_group_and_are_skipped_on_request(tmp_path):
    texts = ["a", None, "b", "c", None, "d"]
    path = write_parquet(tmp_path / "n.parquet", texts, rows_per_group=3)
    with pytest.raises(
        DataError,
        match=re.escape(
            f"{path}: row group 0, row 1: 'text' is null (--skip-bad-lines to skip such rows)"
        ),
    ):
        read_all([path])
    texts, stats = read_all([path], skip_bad_lines=True)
    assert texts == ["a", "b", "c", "d"]
    assert stats.bad_lines == 2
    assert stats.first_bad_line == f"{path}: row group 0, row 1: 'text' is null"
    arrow = write_arrow(tmp_path / "n.arrow", ["a", "b", "c", None], rows_per_batch=2)
    with pytest.raises(
        DataError, match=re.escape(f"{arrow}: record batch 1, row 1: 'text' is null")
    ):
        read_all([arrow])


def _written(path, data):
    path.write_bytes(data)
    return path


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


def _parquet_of(path, table):
    pq.write_table(table, path)
    return path


def _corrupt_row_group(path, group):
    """Zeroes bytes in the middle of one row group's text column (zstd then fails on it)."""
    column = pq.ParquetFile(path).metadata.row_group(group).column(1)
    start = column.dictionary_page_offset or column.data_page_offset
    middle = start + column.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    return path


BAD_FILES = {
    "truncated parquet": (
        lambda d: _truncated(write_parquet(d / "x.parquet", TEXTS)),
        "x.parquet: not a readable Parquet file (Parquet magic bytes not found in footer",
    ),
    "corrupt row group": (
        lambda d: _corrupt_row_group(write_parquet(d / "x.parquet", TEXTS, compression="zstd"), 3),
        "x.parquet: row group 3: cannot read (",
    ),
    "missing column": (
        lambda d: write_parquet(d / "x.parquet", TEXTS, key="body"),
        "x.parquet: no column 'text' (columns: 'id', 'body'; see --text-key)",
    ),
    "non-string column": (
        lambda d: _parquet_of(d / "x.parquet", pa.table({"text": [1, 2]})),
        "x.parquet: column 'text' holds int64, not strings",
    ),
    "binary column": (
        lambda d: _parquet_of(d / "x.parquet", pa.table({"text": [b"a"]})),
        "x.parquet: column 'text' holds binary, not strings",
    ),
    "truncated arrow stream": (
        lambda d: _truncated(write_arrow(d / "x.arrow", TEXTS, rows_per_batch=30)),
        "x.arrow: record batch 6: not a readable Arrow file (",  # rows 180-209 cut short
    ),
    "empty arrow file": (
        lambda d: _written(d / "x.arrow", b""),
        "x.arrow: not a readable Arrow file (",
    ),
    "not arrow": (
        lambda d: _written(d / "x.arrow", b"text,id\n"),
        "x.arrow: not a readable Arrow file (",
    ),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_are_one_line(tmp_path, case):
    make, message = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(DataError) as caught:
        read_all([path], skip_bad_lines=True)  # not a bad row: never skipped
    assert str(caught.value).startswith(f"{tmp_path}/{message}")
    assert "\n" not in str(caught.value)


def test_without_pyarrow_the_refusal_names_the_extra(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "t.parquet", ["a"])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import raises ImportError
    with pytest.raises(
        DataError,
        match=re.escape(
            "reading Parquet and Arrow files needs the 'pyarrow' package: "
            "pip install 'llama-data[parquet]'"
        ),
    ):
        read_all([path])

"""Input files for the tests: jsonl, and Parquet and Arrow written with pyarrow (and ``datasets``
for its own layout)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

# Texts with what could go wrong in a column: non-ASCII, newlines, empty and whitespace-only rows.
TEXTS = [
    f"row {i}: " + ("naïve café 🦙 " * (i % 7)) + ("\nsecond line" if i % 5 == 0 else "")
    for i in range(300)
]
TEXTS[10] = ""
TEXTS[11] = " \n\t "


def write_jsonl(path, texts, key="text"):
    path.write_text("".join(json.dumps({key: t}) + "\n" for t in texts), encoding="utf-8")
    return path


def write_parquet(path, texts, rows_per_group=40, key="text", **parquet_options):
    table = pa.table({"id": list(range(len(texts))), key: texts})
    pq.write_table(table, path, row_group_size=rows_per_group, **parquet_options)
    return path


def write_arrow(path, texts, rows_per_batch=40, stream=True):
    """An Arrow IPC stream (as ``datasets`` writes) or file (Feather v2)."""
    schema = pa.schema([("text", pa.string()), ("id", pa.int64())])
    new = pa.ipc.new_stream if stream else pa.ipc.new_file
    with pa.OSFile(str(path), "wb") as sink, new(sink, schema) as writer:
        for start in range(0, len(texts), rows_per_batch):
            rows = texts[start : start + rows_per_batch]
            ids = list(range(start, start + len(rows)))
            writer.write_batch(pa.record_batch([pa.array(rows), pa.array(ids)], schema=schema))
    return path


def save_to_disk(directory, texts, num_shards=3):
    """A ``datasets.Dataset.save_to_disk`` directory: Arrow files plus dataset_info.json."""
    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(directory), num_shards=num_shards)
    return directory

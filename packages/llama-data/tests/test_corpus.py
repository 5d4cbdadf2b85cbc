"""Finding input files and reading documents out of jsonl / jsonl.zst / jsonl.gz / txt."""

from __future__ import annotations

import gzip
import itertools
import json

import pytest
import zstandard

from llama_data import DataError
from llama_data.corpus import (
    ReadOptions,
    ReadStats,
    find_input_files,
    iter_documents,
    iter_texts,
    plan_tasks,
)


def write_jsonl(path, texts, key="text"):
    path.write_text(
        "".join(json.dumps({key: t, "id": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8"
    )
    return path


def read_all(files, **options):
    stats = ReadStats()
    return list(iter_texts(files, ReadOptions(**options), stats)), stats


def test_find_input_files(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in [
        "d/b.jsonl",
        "d/a.txt",
        "d/sub/c.jsonl.zst",
        "d/skip.idx",
        "d/sub/e.jsonl.gz",
        "x.jsonl",
    ]:
        (tmp_path / name).write_bytes(b"")
    found = [
        f.path
        for f in find_input_files(
            [tmp_path / "x.jsonl", tmp_path / "d", str(tmp_path / "d" / "*.jsonl")]
        )
    ]
    assert found == [
        str(tmp_path / "x.jsonl"),
        str(tmp_path / "d/a.txt"),
        str(tmp_path / "d/b.jsonl"),
        str(tmp_path / "d/sub/c.jsonl.zst"),
        str(tmp_path / "d/sub/e.jsonl.gz"),
    ]  # d/b.jsonl matched twice, listed once
    assert [f.kind for f in find_input_files([tmp_path / "d"])] == [
        ".txt",
        ".jsonl",
        ".jsonl.zst",
        ".jsonl.gz",
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope.jsonl", "nope.jsonl: no such file or directory"),
        ("*.parquet", r"\*\.parquet: pattern matches no input files"),
        ("empty", "empty: directory holds no input files"),
        ("data.csv", "data.csv: unsupported input file"),
    ],
)
def test_bad_input_specs(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=message):
        find_input_files([spec])


def test_jsonl_texts_in_order_with_blank_and_empty_documents(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(
        '{"text": "one"}\n\n   \n{"text": ""}\n  {"text": "two", "n": 1}  \r\n{"text": " \\n "}\n{"text": "three"}',
        encoding="utf-8",
    )
    texts, stats = read_all(find_input_files([path]))
    assert texts == ["one", "two", "three"]
    assert (stats.documents, stats.empty_documents, stats.bad_lines) == (3, 2, 0)


def test_compressed_jsonl_reads_like_plain(tmp_path):
    texts = [f"document {i} " + "é" * (i % 7) for i in range(500)]
    plain = write_jsonl(tmp_path / "p.jsonl", texts)
    data = plain.read_bytes()
    # several zstd frames: readers must continue across frames
    half = len(data) // 2
    cctx = zstandard.ZstdCompressor()
    (tmp_path / "z.jsonl.zst").write_bytes(cctx.compress(data[:half]) + cctx.compress(data[half:]))
    (tmp_path / "g.jsonl.gz").write_bytes(gzip.compress(data))
    for name in ["z.jsonl.zst", "g.jsonl.gz"]:
        assert read_all(find_input_files([tmp_path / name]))[0] == texts


def test_jsonl_chunks_cover_every_line_once(tmp_path):
    texts = [f"line {i} " + "x" * (i % 50) for i in range(2000)]
    path = write_jsonl(tmp_path / "big.jsonl", texts)
    files = find_input_files([path])
    tasks = plan_tasks(files, chunk_bytes=1000)
    assert len(tasks) > 20
    parts = [part for task in tasks for part in task.parts]
    assert len(parts) == len(tasks)  # one file: one range per task
    assert parts[0].start == 0 and parts[-1].end == path.stat().st_size
    assert all(a.end == b.start for a, b in itertools.pairwise(parts))
    data = path.read_bytes()
    assert all(data[p.start - 1 : p.start] == b"\n" for p in parts[1:])
    longest_line = max(map(len, data.split(b"\n"))) + 1
    assert all(p.end - p.start <= 1000 + longest_line for p in parts)  # the cap, ending a line
    got = []
    for task in tasks:
        for batch in iter_documents(task, ReadOptions(), ReadStats()):
            got.extend(batch)
    assert got == texts


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"text": "a"', "invalid JSON"),
        ('{"text": "a"} trailing', "invalid JSON (extra data at column 15)"),
        ('["text"]', "expected a JSON object, got list"),
        ('{"body": "a"}', "no key 'text'"),
        ('{"text": 5}', "'text' is not a string"),
        ('{"text": null}', "'text' is not a string"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, line, reason):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n' + line + '\n{"text": "after"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"bad\.jsonl:3: {__import__('re').escape(reason)}"):
        read_all(find_input_files([path]))
    texts, stats = read_all(find_input_files([path]), skip_bad_lines=True)
    assert texts == ["ok", "after"]
    assert stats.bad_lines == 1
    assert stats.first_bad_line.startswith(f"{path}:3: {reason}")


def test_bad_line_number_in_a_later_chunk(tmp_path):
    path = write_jsonl(tmp_path / "big.jsonl", [f"t{i}" for i in range(300)])
    with open(path, "ab") as f:
        f.write(b'{"text": broken}\n')
    tasks = plan_tasks(find_input_files([path]), chunk_bytes=500)
    with pytest.raises(DataError, match=r"big\.jsonl:301: invalid JSON"):
        for task in tasks:
            list(iter_documents(task, ReadOptions(), ReadStats()))


def test_invalid_utf8_line(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"bin\.jsonl:2: not valid UTF-8"):
        read_all(find_input_files([path]))
    assert read_all(find_input_files([path]), skip_bad_lines=True)[0] == ["ok"]


def test_corrupt_zst(tmp_path):
    (tmp_path / "c.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(b'{"text": "a"}\n' * 100)[:-9]
    )
    with pytest.raises(DataError, match=r"c\.jsonl\.zst: cannot decompress"):
        read_all(find_input_files([tmp_path / "c.jsonl.zst"]))


def test_other_text_key(tmp_path):
    path = write_jsonl(tmp_path / "k.jsonl", ["a", "b"], key="content")
    assert read_all(find_input_files([path]), text_key="content")[0] == ["a", "b"]


TXT = "Title\r\n\r\nFirst paragraph,\nstill first.\n\n\n  Second one.\n \t\nThird\n"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("file", [TXT]),
        ("paragraph", ["Title", "First paragraph,\nstill first.", "  Second one.", "Third"]),
        ("line", ["Title", "First paragraph,", "still first.", "  Second one.", "Third"]),
    ],
)
def test_txt_modes(tmp_path, mode, expected):
    (tmp_path / "t.txt").write_bytes(TXT.encode("utf-8"))
    assert read_all(find_input_files([tmp_path / "t.txt"]), txt_mode=mode)[0] == expected


def test_txt_invalid_utf8(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"fine\nfine\n\xc3(\n")
    with pytest.raises(DataError, match=r"t\.txt:3: not valid UTF-8"):
        read_all(find_input_files([tmp_path / "t.txt"]))

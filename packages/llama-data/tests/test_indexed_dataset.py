"""The .bin/.idx reader and writer against an independent struct-based writer of the byte table."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from mmidx_reference import STRUCT_FORMATS, write_reference

from llama_data import (
    DTYPE_CODES,
    DataError,
    IndexedDataset,
    IndexedDatasetWriter,
    best_dtype,
    merge_datasets,
)

SEQUENCES = [[5, 1, 2], [7], [], [3, 3, 3, 3], [60000, 0]]
DOC_IDX = [0, 2, 3, 5]  # documents: [s0, s1], [s2], [s3, s4]


def numbers_for(code):
    """Values that each dtype holds exactly, including its extremes where they matter."""
    dt = DTYPE_CODES[code]
    if dt.kind == "f":
        return [[0.5, -1.25, 3.0], [1e10], [], [-2.0], [7.75, 0.0]]
    info = np.iinfo(dt)
    return [
        [int(info.min), 1, 2],
        [int(info.max)],
        [],
        [3, 0],
        [int(info.max) - 1, int(info.min) + 1],
    ]


def files(prefix):
    return Path(f"{prefix}.bin").read_bytes(), Path(f"{prefix}.idx").read_bytes()


def test_dtype_codes_are_the_byte_table():
    expected = {
        1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64",
        6: "float64", 7: "float32", 8: "uint16", 9: "uint32", 10: "uint64",
    }  # fmt: skip
    assert {code: dt.name for code, dt in DTYPE_CODES.items()} == expected
    for code, fmt in STRUCT_FORMATS.items():
        assert DTYPE_CODES[code].itemsize == struct.calcsize("<" + fmt)


def test_best_dtype():
    assert best_dtype(32000) == np.uint16
    assert best_dtype(65535) == np.uint16
    assert best_dtype(65536) == np.int32
    assert best_dtype(128256) == np.int32


def test_reads_a_reference_file(tmp_path):
    prefix = str(tmp_path / "ref")
    write_reference(prefix, 8, SEQUENCES, DOC_IDX)
    ds = IndexedDataset(prefix)
    assert len(ds) == 5
    assert ds.dtype == np.uint16
    assert ds.sizes.tolist() == [3, 1, 0, 4, 2]
    assert ds.pointers.tolist() == [0, 6, 8, 8, 16]
    assert ds.doc_idx.tolist() == DOC_IDX
    assert ds.num_docs == 3
    assert ds.num_tokens == 10
    for i, seq in enumerate(SEQUENCES):
        assert ds[i].tolist() == seq
    assert ds[-1].tolist() == [60000, 0]
    assert [s.tolist() for s in ds[1:4]] == SEQUENCES[1:4]
    assert ds.get(3, offset=1, length=2).tolist() == [3, 3]
    assert ds.get(0, offset=1).tolist() == [1, 2]
    assert ds.document_lengths().tolist() == [4, 0, 6]
    assert ds.token_range() == (0, 60000)
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(IndexError):
        ds.get(0, offset=2, length=2)


def test_items_are_views_of_the_mapped_file(tmp_path):
    prefix = str(tmp_path / "ref")
    write_reference(prefix, 4, SEQUENCES, DOC_IDX)
    ds = IndexedDataset(prefix)
    item = ds[3]
    assert not item.flags.owndata and not item.flags.writeable
    assert np.shares_memory(item, ds.tokens)


@pytest.mark.parametrize("code", sorted(DTYPE_CODES))
def test_writer_bytes_equal_reference_bytes_for_every_dtype(tmp_path, code):
    seqs = numbers_for(code)
    write_reference(str(tmp_path / "ref"), code, seqs, DOC_IDX)
    with IndexedDatasetWriter(str(tmp_path / "ours"), DTYPE_CODES[code]) as w:
        w.add_item(seqs[0])
        w.add_item(np.array(seqs[1], dtype=DTYPE_CODES[code]))
        w.end_document()
        w.add_document([seqs[2]])
        w.add_document([seqs[3], seqs[4]])
    assert files(tmp_path / "ours") == files(tmp_path / "ref")
    ds = IndexedDataset(str(tmp_path / "ours"))
    assert ds.dtype == DTYPE_CODES[code]
    assert [ds[i].tolist() for i in range(len(ds))] == seqs


def test_add_documents_matches_one_at_a_time(tmp_path):
    docs = [[1, 2, 3], [], [4], [5, 6]]
    write_reference(str(tmp_path / "ref"), 8, [d for d in docs if d], [0, 1, 2, 3])
    with IndexedDatasetWriter(str(tmp_path / "ours"), np.uint16) as w:
        w.add_documents(np.array([1, 2, 3, 4, 5, 6]), [3, 0, 1, 2])
    assert files(tmp_path / "ours") == files(tmp_path / "ref")


def test_empty_dataset_round_trips(tmp_path):
    with IndexedDatasetWriter(str(tmp_path / "empty"), np.uint16):
        pass
    write_reference(str(tmp_path / "ref"), 8, [], [0])
    assert files(tmp_path / "empty") == files(tmp_path / "ref")
    ds = IndexedDataset(str(tmp_path / "empty"))
    assert (len(ds), ds.num_docs, ds.num_tokens, ds.token_range()) == (0, 0, 0, None)


def test_writer_refuses_ids_that_do_not_fit(tmp_path):
    with (
        pytest.raises(DataError, match="70000 does not fit in uint16"),
        IndexedDatasetWriter(str(tmp_path / "x"), np.uint16) as w,
    ):
        w.add_item(np.array([1, 70000], dtype=np.int64))
    assert os.listdir(tmp_path) == []


def test_writer_refuses_dtypes_without_a_code(tmp_path):
    with pytest.raises(DataError, match="cannot be stored"):
        IndexedDatasetWriter(str(tmp_path / "x"), np.float16)


def test_failed_write_leaves_nothing(tmp_path):
    with (
        pytest.raises(RuntimeError, match="boom"),
        IndexedDatasetWriter(str(tmp_path / "out"), np.uint16) as w,
    ):
        w.add_document([1, 2, 3])
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_an_existing_dataset(tmp_path):
    prefix = str(tmp_path / "out")
    write_reference(prefix, 8, SEQUENCES, DOC_IDX)
    before = files(prefix)
    with pytest.raises(KeyboardInterrupt), IndexedDatasetWriter(prefix, np.uint16) as w:
        w.add_document([9, 9])
        raise KeyboardInterrupt
    assert files(prefix) == before
    assert sorted(os.listdir(tmp_path)) == ["out.bin", "out.idx"]


def test_written_files_get_ordinary_permissions(tmp_path):
    with IndexedDatasetWriter(str(tmp_path / "out"), np.uint16) as w:
        w.add_document([1])
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "out.bin").st_mode & 0o777 == 0o666 & ~umask


def test_merge_concatenates_documents_in_order(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    write_reference(a, 8, [[1, 2], [3]], [0, 2])
    write_reference(b, 8, [[4], [5, 6], [7]], [0, 1, 3])
    write_reference(c, 8, [], [0])
    write_reference(str(tmp_path / "expected"), 8, [[1, 2], [3], [4], [5, 6], [7]], [0, 2, 3, 5])
    ds = merge_datasets([a, b, c], str(tmp_path / "merged"))
    assert files(tmp_path / "merged") == files(tmp_path / "expected")
    assert ds.num_docs == 3


def test_merge_refuses_mixed_dtypes(tmp_path):
    write_reference(str(tmp_path / "a"), 8, [[1]], [0, 1])
    write_reference(str(tmp_path / "b"), 4, [[1]], [0, 1])
    with pytest.raises(DataError, match="different dtypes"):
        merge_datasets([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert not (tmp_path / "m.bin").exists()


def test_pickles_by_name(tmp_path):
    prefix = str(tmp_path / "ref")
    write_reference(prefix, 8, SEQUENCES, DOC_IDX)
    clone = pickle.loads(pickle.dumps(IndexedDataset(prefix)))
    assert clone[3].tolist() == SEQUENCES[3]


def test_check_vocab(tmp_path):
    prefix = str(tmp_path / "ref")
    write_reference(prefix, 8, SEQUENCES, DOC_IDX)
    ds = IndexedDataset(prefix)
    ds.check_vocab(60001)
    with pytest.raises(
        DataError,
        match=r"token id 60000 at token 8 \(sequence 4\) is outside the vocabulary of 60000",
    ):
        ds.check_vocab(60000)


def test_check_vocab_scans_in_chunks(tmp_path, monkeypatch):
    import llama_data.indexed_dataset as module

    monkeypatch.setattr(module, "_SCAN_CHUNK", 4)
    prefix = str(tmp_path / "ref")
    write_reference(prefix, 4, [[1, 2, 3], [4, 5, 6, 7, 8], [-1, 9]], [0, 3])
    ds = IndexedDataset(prefix)
    assert ds.token_range() == (-1, 9)
    with pytest.raises(DataError, match=r"token id -1 at token 8 \(sequence 2\)"):
        ds.check_vocab(100)


# -- every malformed input is a one-line DataError naming the file --------------------------------
def corrupt(tmp_path, edit):
    """A valid reference pair, with its .idx bytes changed by ``edit``."""
    prefix = str(tmp_path / "bad")
    write_reference(prefix, 8, SEQUENCES, DOC_IDX)
    with open(f"{prefix}.idx", "rb") as f:
        idx = bytearray(f.read())
    with open(f"{prefix}.idx", "wb") as f:
        f.write(edit(idx))
    return prefix


def at(offset, fmt, value):
    def edit(idx):
        struct.pack_into(fmt, idx, offset, value)
        return idx

    return edit


SIZES, POINTERS, DOCS = 34, 34 + 4 * 5, 34 + 12 * 5


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda idx: b"TNTIDX\x00\x00" + idx[8:], r"bad\.idx: not an MMIDIDX index"),
        (lambda idx: idx[:20], r"bad\.idx: truncated index \(20 bytes"),
        (lambda idx: idx[:-8], r"bad\.idx: truncated index .*5 sequences and 4 doc_idx entries"),
        (lambda idx: idx + b"\x00", r"bad\.idx: 1 unexpected bytes after doc_idx"),
        (at(9, "<Q", 2), r"bad\.idx: unsupported index version 2"),
        (at(17, "<B", 11), r"bad\.idx: unknown dtype code 11"),
        (at(17, "<B", 0), r"bad\.idx: unknown dtype code 0"),
        (
            at(POINTERS + 8, "<q", 4),
            r"bad\.idx: pointers do not match sizes: sequence 1 starts at byte 4, expected 6",
        ),
        (at(SIZES + 4, "<i", -1), r"bad\.idx: negative size -1 for sequence 1"),
        (at(DOCS, "<q", 1), r"bad\.idx: doc_idx must start at 0 and end at 5 .*first=1"),
        (at(DOCS + 24, "<q", 4), r"bad\.idx: doc_idx must start at 0 and end at 5 .*last=4"),
        (at(DOCS + 8, "<q", 4), r"bad\.idx: doc_idx decreases at entry 2"),
    ],
)
def test_bad_index_is_a_data_error(tmp_path, edit, message):
    prefix = corrupt(tmp_path, edit)
    with pytest.raises(DataError, match=message) as info:
        IndexedDataset(prefix)
    assert "\n" not in str(info.value)


def test_pointers_past_the_end_of_bin(tmp_path):
    # Sizes and pointers agree with each other but need more bytes than .bin holds.
    prefix = str(tmp_path / "bad")
    write_reference(prefix, 8, [[1, 2], [3]], [0, 2])
    with open(f"{prefix}.bin", "r+b") as f:
        f.truncate(4)
    with pytest.raises(
        DataError, match=r"bad\.bin: truncated data file \(4 bytes, the index needs 6"
    ):
        IndexedDataset(prefix)


def test_bin_longer_than_the_index_says(tmp_path):
    prefix = str(tmp_path / "bad")
    write_reference(prefix, 8, [[1, 2], [3]], [0, 2])
    with open(f"{prefix}.bin", "ab") as f:
        f.write(b"\x00\x00")
    with pytest.raises(DataError, match=r"bad\.bin: data file has 8 bytes, the index describes 6"):
        IndexedDataset(prefix)


@pytest.mark.parametrize("missing", ["bin", "idx"])
def test_missing_file(tmp_path, missing):
    prefix = str(tmp_path / "half")
    write_reference(prefix, 8, [[1]], [0, 1])
    os.unlink(f"{prefix}.{missing}")
    with pytest.raises(DataError, match=rf"half\.{missing}: no such file"):
        IndexedDataset(prefix)

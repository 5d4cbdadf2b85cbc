"""GPTDataset: sample contents, split ranges, agreement with upstream, and the index cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from test_sample_index import ref_build_all

from llama_data.errors import DataError
from llama_data.gpt_dataset import GPTDataset
from llama_data.indexed_dataset import IndexedDataset, IndexedDatasetWriter


def write_corpus(prefix, rng, num_docs, *, max_len=40, seqs_per_doc=1, empty_every=7):
    """Writes a corpus and returns each document's tokens as the test itself recorded them."""
    docs = []
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        for d in range(num_docs):
            parts = []
            for _ in range(seqs_per_doc):
                n = 0 if d % empty_every == 3 else int(rng.integers(1, max_len))
                seq = rng.integers(0, 60_000, n)
                writer.add_item(seq)
                parts.append(seq)
            writer.end_document()
            docs.append(np.concatenate(parts).astype(np.int64))
    return docs


@pytest.fixture
def corpus(tmp_path):
    prefix = str(tmp_path / "corpus")
    docs = write_corpus(prefix, np.random.default_rng(0), 120)
    return prefix, docs


def assert_samples_follow_stream(ds, docs):
    """Sample k (before shuffling) is tokens [k*S, k*S + S + 1) of the documents in doc_idx order."""
    stream = np.concatenate([docs[d] for d in ds.doc_idx])
    order = np.argsort(np.asarray(ds.shuffle_idx))  # dataset position of the k-th unshuffled sample
    s = ds.seq_len
    for k in range(len(ds)):
        sample = ds[int(order[k])]
        assert sample.dtype == np.int64 and sample.shape == (s + 1,)
        np.testing.assert_array_equal(sample, stream[k * s : k * s + s + 1], err_msg=f"sample {k}")


@pytest.mark.parametrize("seq_len", [1, 5, 64])
def test_samples_reproduce_the_token_stream(corpus, tmp_path, seq_len):
    prefix, docs = corpus
    tokens = sum(len(d) for d in docs)
    num_samples = int(2.5 * tokens / seq_len)  # 2.5 epochs: the last one shuffled apart
    ds = GPTDataset(prefix, seq_len=seq_len, num_samples=num_samples, split="1", seed=5)
    assert ds.num_epochs == 3 and ds.separate_last_epoch and len(ds) >= num_samples
    assert sorted(np.asarray(ds.shuffle_idx).tolist()) == list(range(len(ds)))
    counts = np.bincount(np.asarray(ds.doc_idx), minlength=len(docs))
    assert (counts == ds.num_epochs).all()  # every document once per epoch
    assert_samples_follow_stream(ds, docs)


def test_multi_sequence_documents_are_read_whole(tmp_path):
    prefix = str(tmp_path / "multi")
    docs = write_corpus(prefix, np.random.default_rng(1), 50, seqs_per_doc=3, empty_every=5)
    assert len(IndexedDataset(prefix)) == 150
    ds = GPTDataset(prefix, seq_len=16, num_samples=200, split="1", seed=3)
    assert_samples_follow_stream(ds, docs)


def test_splits_take_their_document_ranges(corpus):
    prefix, docs = corpus
    # 120 documents, "8,1,1": 96 / 12 / 12 (exact, no rounding)
    expected = {"train": (0, 96), "valid": (96, 108), "test": (108, 120)}
    for which, (first, last) in expected.items():
        ds = GPTDataset(prefix, seq_len=8, num_samples=10, split="8,1,1", which=which)
        assert ds.documents == (first, last)
        assert set(np.asarray(ds.doc_idx).tolist()) == set(range(first, last))
        assert_samples_follow_stream(ds, docs)


def test_indices_equal_upstream_for_one_sequence_per_document(corpus):
    prefix, _ = corpus
    sizes = IndexedDataset(prefix).sizes
    ds = GPTDataset(prefix, seq_len=12, num_samples=500, split="949,50,1", seed=42)
    first, last = ds.documents
    doc_idx, sample_idx, shuffle_idx, epochs, _ = ref_build_all(
        sizes, np.arange(first, last, dtype=np.int32), 12, 500, 42
    )
    np.testing.assert_array_equal(ds.doc_idx, doc_idx)
    np.testing.assert_array_equal(ds.sample_idx, sample_idx)
    np.testing.assert_array_equal(ds.shuffle_idx, shuffle_idx)
    assert ds.num_epochs == epochs


def test_second_build_reads_the_cache(corpus):
    prefix, _ = corpus
    first = GPTDataset(prefix, seq_len=8, num_samples=100)
    assert first.built
    stamps = {name: os.stat(p).st_mtime_ns for name, p in first.cache_files.items()}
    again = GPTDataset(prefix, seq_len=8, num_samples=100)
    assert not again.built
    assert {name: os.stat(p).st_mtime_ns for name, p in again.cache_files.items()} == stamps
    assert isinstance(again.sample_idx.base, np.memmap)  # read through the file, not copied
    for name in ("doc_idx", "sample_idx", "shuffle_idx"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    # anything that changes the indices names another entry
    other = GPTDataset(prefix, seq_len=8, num_samples=100, seed=1)
    assert other.built and other.cache_files["meta"] != first.cache_files["meta"]


@pytest.mark.parametrize("damage", ["truncate", "garbage_meta", "missing_array"])
def test_damaged_cache_is_rebuilt(corpus, damage):
    prefix, _ = corpus
    good = GPTDataset(prefix, seq_len=8, num_samples=100)
    expected = np.array(good.shuffle_idx)
    files = good.cache_files
    if damage == "truncate":
        with open(files["shuffle_idx"], "r+b") as f:
            f.truncate(os.path.getsize(files["shuffle_idx"]) - 8)
    elif damage == "garbage_meta":
        files["meta"].write_text('{"files": ')
    else:
        os.remove(files["doc_idx"])
    rebuilt = GPTDataset(prefix, seq_len=8, num_samples=100)
    assert rebuilt.built
    np.testing.assert_array_equal(rebuilt.shuffle_idx, expected)
    assert json.loads(files["meta"].read_text())["files"]["shuffle_idx"]["shape"] == [len(expected)]


def test_cache_dir_and_in_memory_dataset(corpus, tmp_path):
    prefix, _ = corpus
    cache = tmp_path / "elsewhere"
    ds = GPTDataset(IndexedDataset(prefix), seq_len=8, num_samples=50, cache_dir=cache)
    assert all(p.parent == cache for p in ds.cache_files.values())
    assert not (tmp_path / "index-cache").exists()


def test_index_errors(corpus):
    prefix, _ = corpus
    ds = GPTDataset(prefix, seq_len=8, num_samples=50)
    np.testing.assert_array_equal(ds[-1], ds[len(ds) - 1])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_bad_input_is_a_data_error(corpus):
    prefix, _ = corpus
    with pytest.raises(DataError, match=r"valid split \('1,0,0'\) holds 0 of 120 documents"):
        GPTDataset(prefix, seq_len=8, num_samples=10, split="1,0,0", which="valid")
    with pytest.raises(DataError, match="seq_len"):
        GPTDataset(prefix, seq_len=0, num_samples=10)
    with pytest.raises(DataError, match="which"):
        GPTDataset(prefix, seq_len=8, num_samples=10, which="dev")
    with pytest.raises(DataError, match="split"):
        GPTDataset(prefix, seq_len=8, num_samples=10, split="x")


_RANK_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from llama_data.gpt_dataset import GPTDataset
    prefix, rank, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    time.sleep(delay)
    ds = GPTDataset(prefix, seq_len=8, num_samples=20_000, seed=9, rank=rank, timeout=60)
    print(json.dumps({"rank": rank, "built": ds.built, "shuffle": ds.shuffle_idx.tobytes().hex(),
                      "sample": ds.sample_idx.tobytes().hex(), "first": ds[0].tolist()}))
    """
)


@pytest.mark.dist
def test_rank0_builds_while_other_ranks_wait(corpus):
    prefix, _ = corpus
    # ranks 1-2 start first and must wait; rank 0 starts a second later and builds
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RANK_SCRIPT, prefix, str(rank), str(delay)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, delay in ((1, 0.0), (2, 0.0), (0, 1.0))
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert [r["built"] for r in results] == [False, False, True]
    assert len({(r["shuffle"], r["sample"], str(r["first"])) for r in results}) == 1
    here = GPTDataset(prefix, seq_len=8, num_samples=20_000, seed=9)
    assert not here.built and here.shuffle_idx.tobytes().hex() == results[0]["shuffle"]


def test_waiting_rank_times_out_with_a_clear_message(corpus):
    prefix, _ = corpus
    start = time.monotonic()
    with pytest.raises(DataError, match=r"waited 0.5s for rank 0 to build the index cache"):
        GPTDataset(prefix, seq_len=8, num_samples=10, rank=3, timeout=0.5)
    assert time.monotonic() - start < 10

"""The sample index against upstream: a line-by-line transcription of Megatron-LM's legacy
``gpt_dataset.py`` / ``helpers.cpp`` kept here, and the ``fast-dataindex`` package (upstream's C++
helpers as published on PyPI)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from fast_dataindex import helpers as peer

from llama_data.errors import DataError
from llama_data.sample_index import (
    build_sample_idx,
    build_sample_index,
    num_epochs_needed,
    parse_split,
    shuffle_like_numpy,
    split_boundaries,
)

BOTH = pytest.mark.parametrize("use_extension", [True, False], ids=["c", "numpy"])


# --- upstream, transcribed -------------------------------------------------------------------


def ref_split(splits_string, size):
    splits = [float(s) for s in splits_string.split(",")]
    while len(splits) < 3:
        splits.append(0.0)
    total = sum(splits)
    splits = [s / total for s in splits]
    idx = [0]
    for i, s in enumerate(splits):
        idx.append(idx[i] + int(round(s * float(size))))  # noqa: RUF046  (verbatim upstream)
    diff = idx[-1] - size
    for i in range(1, len(idx)):
        idx[i] -= diff
    return idx


def ref_num_epochs(tokens_per_epoch, seq_length, num_samples):
    num_epochs, total = 0, 0
    while True:
        num_epochs += 1
        total += tokens_per_epoch
        if ((total - 1) // seq_length) >= num_samples:
            return num_epochs


def ref_doc_idx(documents, num_epochs, rng, separate_last_epoch):
    if not separate_last_epoch or num_epochs == 1:
        doc_idx = np.mgrid[0:num_epochs, 0 : len(documents)][1]
        doc_idx[:] = documents
        doc_idx = doc_idx.reshape(-1).astype(np.int32)
        rng.shuffle(doc_idx)
        return doc_idx
    first = ref_doc_idx(documents, num_epochs - 1, rng, False)
    last = ref_doc_idx(documents, 1, rng, False)
    return np.concatenate((first, last))


def ref_sample_idx(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch):
    num_samples = (num_epochs * tokens_per_epoch - 1) // seq_length
    sample_idx = np.zeros([num_samples + 1, 2], dtype=np.int32)
    sample_index, doc_idx_index, doc_offset = 0, 0, 0
    sample_idx[0] = (doc_idx_index, doc_offset)
    sample_index += 1
    while sample_index <= num_samples:
        remaining = seq_length + 1
        while remaining != 0:
            doc_length = sizes[doc_idx[doc_idx_index]] - doc_offset
            remaining -= doc_length
            if remaining <= 0:
                doc_offset += remaining + doc_length - 1
                remaining = 0
            else:
                doc_idx_index += 1
                doc_offset = 0
        sample_idx[sample_index] = (doc_idx_index, doc_offset)
        sample_index += 1
    return sample_idx


def ref_shuffle_idx(num_samples, total_size, rng):
    first = np.arange(0, num_samples, dtype=np.uint32)
    rng.shuffle(first)
    if num_samples == total_size:
        return first
    last = np.arange(num_samples, total_size, dtype=np.uint32)
    rng.shuffle(last)
    return np.concatenate((first, last))


def ref_build_all(sizes, documents, seq_length, num_samples, seed):
    tokens_per_epoch = int(np.sum(sizes[documents]))
    num_epochs = ref_num_epochs(tokens_per_epoch, seq_length, num_samples)
    rng = np.random.RandomState(seed=seed)
    if num_epochs == 1:
        separate = False
    else:
        from_first = ((num_epochs - 1) * tokens_per_epoch - 1) // seq_length
        last_epoch_samples = num_samples - from_first
        per_epoch = (tokens_per_epoch - 1) // seq_length
        separate = last_epoch_samples < int(0.80 * per_epoch)
    doc_idx = ref_doc_idx(documents, num_epochs, rng, separate)
    sample_idx = ref_sample_idx(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch)
    n = from_first if separate else sample_idx.shape[0] - 1
    shuffle_idx = ref_shuffle_idx(n, sample_idx.shape[0] - 1, rng)
    return doc_idx, sample_idx, shuffle_idx, num_epochs, separate


def random_sizes(rng, n, zero_fraction=0.2, high=40):
    sizes = rng.integers(1, high, n).astype(np.int32)
    sizes[rng.random(n) < zero_fraction] = 0
    return sizes


# --- tests -------------------------------------------------------------------------------------


@BOTH
def test_sample_idx_matches_reference_and_peer(use_extension):
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(1, 80))
        sizes = random_sizes(rng, n, zero_fraction=float(rng.choice([0.0, 0.3, 0.7])))
        if sizes.sum() < 2:
            sizes[0] = 2
        seq_len = int(rng.choice([1, 2, 3, 5, 16, 64, 500]))  # 500: longer than any document
        epochs = int(rng.integers(1, 4))
        tpe = int(sizes.sum())
        doc_idx = rng.permutation(np.tile(np.arange(n, dtype=np.int32), epochs)).astype(np.int32)
        ours = build_sample_idx(sizes, doc_idx, seq_len, epochs, tpe, use_extension)
        expected = ref_sample_idx(sizes, doc_idx, seq_len, epochs, tpe)
        assert ours.dtype == np.int32
        np.testing.assert_array_equal(ours, expected)
        np.testing.assert_array_equal(
            ours, peer.build_sample_idx(sizes, doc_idx, seq_len, epochs, tpe)
        )


def test_sample_idx_c_equals_numpy_on_a_large_input():
    rng = np.random.default_rng(1)
    sizes = rng.lognormal(np.log(300), 1.0, 200_000).astype(np.int32)
    doc_idx = rng.permutation(len(sizes)).astype(np.int32)
    tpe = int(sizes.sum())
    c = build_sample_idx(sizes, doc_idx, 2048, 1, tpe, use_extension=True)
    np.testing.assert_array_equal(
        c, build_sample_idx(sizes, doc_idx, 2048, 1, tpe, use_extension=False)
    )
    np.testing.assert_array_equal(c, peer.build_sample_idx(sizes, doc_idx, 2048, 1, tpe))


@BOTH
def test_int64_doc_idx_gives_the_same_rows(use_extension):
    rng = np.random.default_rng(2)
    sizes = random_sizes(rng, 50)
    doc_idx = rng.permutation(50).astype(np.int32)
    tpe = int(sizes.sum())
    a = build_sample_idx(sizes, doc_idx, 7, 1, tpe, use_extension)
    b = build_sample_idx(sizes, doc_idx.astype(np.int64), 7, 1, tpe, use_extension)
    np.testing.assert_array_equal(a, b)


@BOTH
def test_too_few_tokens_is_an_error_not_garbage(use_extension):
    sizes = np.array([3, 3], dtype=np.int32)
    with pytest.raises((ValueError, IndexError)):
        # tokens_per_epoch claims more tokens than the documents hold
        build_sample_idx(sizes, np.array([0, 1], dtype=np.int32), 2, 1, 50, use_extension)


@BOTH
def test_full_index_matches_upstream_transcription(use_extension):
    rng = np.random.default_rng(3)
    separate_seen = set()
    for case in range(40):
        n_all = int(rng.integers(3, 60))
        sizes = random_sizes(rng, n_all)
        start = int(rng.integers(0, n_all // 2))
        documents = np.arange(start, n_all, dtype=np.int32)
        if sizes[documents].sum() == 0:
            sizes[documents[0]] = 5
        seq_len = int(rng.choice([1, 4, 9, 32, 200]))
        per_epoch = (int(sizes[documents].sum()) - 1) // seq_len
        num_samples = int(rng.integers(0, 4 * per_epoch + 3))
        seed = int(rng.integers(0, 2**31))
        got = build_sample_index(sizes, documents, seq_len, num_samples, seed, use_extension)
        doc_idx, sample_idx, shuffle_idx, epochs, separate = ref_build_all(
            sizes, documents, seq_len, num_samples, seed
        )
        np.testing.assert_array_equal(got.doc_idx, doc_idx, err_msg=f"case {case}")
        np.testing.assert_array_equal(got.sample_idx, sample_idx, err_msg=f"case {case}")
        np.testing.assert_array_equal(got.shuffle_idx, shuffle_idx, err_msg=f"case {case}")
        assert got.doc_idx.dtype == np.int32 and got.shuffle_idx.dtype == np.uint32
        assert (got.num_epochs, got.separate_last_epoch) == (epochs, separate)
        assert len(got) >= num_samples
        separate_seen.add(separate)
    assert separate_seen == {True, False}  # both shuffling regimes were exercised


@BOTH
def test_shuffle_is_numpy_randomstate_shuffle(use_extension):
    for n in (0, 1, 2, 3, 1000, 70_000):
        for dtype in (np.int32, np.int64, np.uint32, np.uint16):
            ours, theirs = np.arange(n).astype(dtype), np.arange(n).astype(dtype)
            rng_ours, rng_theirs = np.random.RandomState(n + 11), np.random.RandomState(n + 11)
            shuffle_like_numpy(rng_ours, ours, use_extension)
            rng_theirs.shuffle(theirs)
            np.testing.assert_array_equal(ours, theirs)
            # the generator continues exactly where numpy's would
            assert (
                rng_ours.randint(0, 2**31, 5).tolist() == rng_theirs.randint(0, 2**31, 5).tolist()
            )


def test_num_epochs_matches_upstream_loop():
    rng = np.random.default_rng(4)
    for _ in range(500):
        tpe, seq, n = (
            int(rng.integers(1, 500)),
            int(rng.integers(1, 300)),
            int(rng.integers(0, 5000)),
        )
        assert num_epochs_needed(tpe, seq, n) == ref_num_epochs(tpe, seq, n)


def test_split_boundaries():
    # hand-computed: 1/3 of 10 rounds to 3 three times, so every boundary moves up by one
    assert split_boundaries("1,1,1", 10) == (0, 4, 7, 10)
    assert split_boundaries("949,50,1", 1000) == (0, 949, 999, 1000)
    assert split_boundaries("0.949,0.05,0.001", 1000) == (0, 949, 999, 1000)
    assert split_boundaries("1", 7) == (0, 7, 7, 7)
    assert split_boundaries("9/1", 20) == (0, 18, 20, 20)
    rng = np.random.default_rng(5)
    for _ in range(300):
        parts = rng.integers(0, 1000, int(rng.integers(1, 4)))
        if parts.sum() == 0:
            continue
        text, size = ",".join(map(str, parts)), int(rng.integers(0, 5000))
        assert list(split_boundaries(text, size)) == ref_split(text, size)


@pytest.mark.parametrize("bad", ["", "a,b", "1,2,3,4", "0,0,0", "-1,2", "nan,1", "1,,2"])
def test_bad_split_strings(bad):
    with pytest.raises(DataError, match="split"):
        parse_split(bad)


def test_bad_arguments():
    sizes = np.array([5, 5], dtype=np.int32)
    with pytest.raises(DataError, match="seq_len"):
        build_sample_index(sizes, np.arange(2), 0, 10, 1)
    with pytest.raises(DataError, match="2 documents holding no tokens"):
        build_sample_index(np.zeros(2, np.int32), np.arange(2), 4, 10, 1)


_BUILD_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np
    from llama_data.sample_index import build_sample_index
    rng = np.random.default_rng(7)
    sizes = rng.integers(0, 300, 20_000).astype(np.int32)
    index = build_sample_index(sizes, np.arange(500, 20_000), 128, 100_000, 99)
    for name in ("doc_idx", "sample_idx", "shuffle_idx"):
        sys.stdout.buffer.write(getattr(index, name).tobytes())
    """
)


def test_identical_bytes_across_processes():
    runs = [
        subprocess.run(
            [sys.executable, "-c", _BUILD_SCRIPT], capture_output=True, check=True
        ).stdout
        for _ in range(2)
    ]
    assert len(runs[0]) > 100_000
    assert runs[0] == runs[1]
    rng = np.random.default_rng(7)
    sizes = rng.integers(0, 300, 20_000).astype(np.int32)
    here = build_sample_index(sizes, np.arange(500, 20_000), 128, 100_000, 99, use_extension=False)
    assert runs[0] == b"".join(
        a.tobytes() for a in (here.doc_idx, here.sample_idx, here.shuffle_idx)
    )


def test_environment_switch_selects_the_numpy_twin(monkeypatch):
    from llama_data._native import select

    assert select(None) is not None  # the extension is built where the tests run
    monkeypatch.setenv("LLAMA_DATA_NO_EXT", "1")
    assert select(None) is None
    with pytest.raises(RuntimeError, match="LLAMA_DATA_NO_EXT"):
        build_sample_idx(
            np.array([4], np.int32), np.array([0], np.int32), 2, 1, 4, use_extension=True
        )

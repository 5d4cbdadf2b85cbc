"""Blending: upstream's greedy rule (checked against fast-dataindex), exact proportions, caching."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from fast_dataindex import helpers as peer
from test_gpt_dataset import write_corpus

from llama_data.blending import (
    BlendedDataset,
    build_blending_indices,
    build_gpt_datasets,
    parse_blend,
)
from llama_data.errors import DataError
from llama_data.gpt_dataset import GPTDataset

BOTH = pytest.mark.parametrize("use_extension", [True, False], ids=["c", "numpy"])


def random_weights(rng, n):
    w = rng.random(n) ** 2 + 1e-3
    return w / w.sum()


@BOTH
def test_blending_indices_equal_the_peer(use_extension):
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7):
        for size in (1, 2, 5, 997, 20_000):
            weights = random_weights(rng, n)
            di, si = build_blending_indices(weights, size, use_extension)
            want_di, want_si = np.zeros(size, np.uint8), np.zeros(size, np.int64)
            peer.build_blending_indices(want_di, want_si, weights, n, size, False)
            np.testing.assert_array_equal(di, want_di)
            np.testing.assert_array_equal(si, want_si)


def prefix_counts(dataset_index, n):
    """counts[t - 1, d]: samples of dataset d among the first t, counted independently."""
    one_hot = np.zeros((len(dataset_index), n), dtype=np.int64)
    one_hot[np.arange(len(dataset_index)), dataset_index] = 1
    return np.cumsum(one_hot, axis=0)


@BOTH
def test_proportions_at_every_prefix(use_extension):
    rng = np.random.default_rng(1)
    for n in (2, 3, 5, 300):  # 300 datasets: the int16 dataset index
        for _ in range(3):
            weights = random_weights(rng, n)
            size = 4_000 if use_extension else 1_000
            di, si = build_blending_indices(weights, size, use_extension)
            assert di.dtype == (np.uint8 if n <= 255 else np.int16)
            counts = prefix_counts(di, n)
            share = np.arange(1, size + 1)[:, None] * weights[None, :]
            # Never a whole sample ahead of its share (so ceil(weight * n) samples always suffice).
            assert (counts - share).max() < 1.0
            if n == 2:
                assert (share - counts).max() < 1.0  # two datasets: within one sample both ways
            else:
                # With 3+ datasets upstream's rule can lag a dataset by more than one sample; the
                # worst seen over many random weights is about 1.65.
                assert (share - counts).max() < 2.0
            # each dataset's samples are taken in order 0, 1, 2, ...
            np.testing.assert_array_equal(si, counts[np.arange(size), di] - 1)


def test_parse_blend():
    assert parse_blend("0.7 a 0.3 b") == [(0.7, "a"), (0.3, "b")]
    assert parse_blend("data/x") == [(1.0, "data/x")]
    assert parse_blend(["3", "a", "1", "b"]) == [(0.75, "a"), (0.25, "b")]
    assert parse_blend([(1, "a"), (1, "b")]) == [(0.5, "a"), (0.5, "b")]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0.7 a 0.3", "pairs"),
        ("x a 0.3 b", "not a number"),
        ("-1 a 2 b", ">= 0"),
        ("0 a 0 b", "sum to zero"),
        ("", "no dataset"),
    ],
)
def test_bad_blends(spec, message):
    with pytest.raises(DataError, match=message):
        parse_blend(spec)


@pytest.fixture
def two_corpora(tmp_path):
    rng = np.random.default_rng(2)
    prefixes = [str(tmp_path / "web"), str(tmp_path / "code")]
    docs = [write_corpus(p, rng, 80) for p in prefixes]
    return prefixes, docs


def test_blended_dataset_reads_from_its_parts_and_caches(two_corpora):
    prefixes, _ = two_corpora
    parts = [GPTDataset(p, seq_len=8, num_samples=200, seed=3) for p in prefixes]
    blend = BlendedDataset(parts, [2.0, 1.0], 300)
    assert blend.built and len(blend) == 300
    assert blend.counts.tolist() == [200, 100]  # 2:1 of 300, exactly
    for i in (0, 1, 2, 150, 299):
        d, s = int(blend.dataset_index[i]), int(blend.dataset_sample_index[i])
        np.testing.assert_array_equal(blend[i], parts[d][s])
    again = BlendedDataset(parts, [2.0, 1.0], 300)
    assert not again.built and again.cache_files == blend.cache_files
    np.testing.assert_array_equal(again.dataset_index, blend.dataset_index)
    with pytest.raises(IndexError):
        blend[300]


def test_a_dataset_too_small_for_its_share_is_an_error(two_corpora):
    prefixes, _ = two_corpora
    tiny = GPTDataset(prefixes[0], seq_len=8, num_samples=0, split="1")
    big = GPTDataset(prefixes[1], seq_len=8, num_samples=5000, split="1")
    with pytest.raises(
        DataError, match=f"blend needs .* samples from dataset 0 .* has {len(tiny)}"
    ):
        BlendedDataset([tiny, big], [0.5, 0.5], 4 * len(tiny))


def test_build_gpt_datasets_sizes_each_part_with_the_margin(two_corpora):
    prefixes, _ = two_corpora
    spec = f"0.7 {prefixes[0]} 0.3 {prefixes[1]}"
    out = build_gpt_datasets(spec, seq_len=8, num_samples=(400, 30), split="90,10", seed=4)
    assert out["test"] is None
    train, valid = out["train"], out["valid"]
    assert [ds.num_samples for ds in train.datasets] == [
        math.ceil(400 * 0.7 * 1.005),
        math.ceil(400 * 0.3 * 1.005),
    ]
    assert [ds.which for ds in valid.datasets] == ["valid", "valid"]
    assert train.counts.tolist() == [280, 120] and len(valid) == 30
    single = build_gpt_datasets(prefixes[0], seq_len=8, num_samples=[50], split="1")["train"]
    assert isinstance(single, GPTDataset) and single.num_samples == 50


def test_samples_command(two_corpora, tmp_path):
    from click.testing import CliRunner

    from llama_data.cli import main

    prefixes, _ = two_corpora
    spec = f"3 {prefixes[0]} 1 {prefixes[1]}"
    args = ["samples", "--data", spec, "--seq-len", "8", "--num-samples", "400", "--split", "9,1"]
    result = CliRunner().invoke(main, [*args, "--valid-samples", "20", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert sorted(summary) == ["train", "valid"]
    assert summary["train"]["samples"] == 400
    assert summary["train"]["blend"]["counts"] == [300, 100]
    assert [d["requested"] for d in summary["train"]["datasets"]] == [
        math.ceil(400 * 0.75 * 1.005),
        math.ceil(400 * 0.25 * 1.005),
    ]
    assert all(d["built"] for d in summary["train"]["datasets"])
    # a second run finds everything cached and says so
    again = CliRunner().invoke(main, args)
    assert (
        again.exit_code == 0 and "built" not in again.output and again.output.count("cached") == 3
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "0.5 a b"], "WEIGHT PREFIX pairs"),
        (
            ["--split", "1,0,0", "--valid-samples", "3"],
            "valid split ('1,0,0') holds 0 of 80 documents",
        ),
    ],
)
def test_samples_command_bad_input(two_corpora, extra, message):
    from click.testing import CliRunner

    from llama_data.cli import main

    prefixes, _ = two_corpora
    args = ["samples", "--data", prefixes[0], "--seq-len", "8", "--num-samples", "10", *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()]  # one line
    assert message in result.output

"""Random sample reads per second through GPTDataset and a blend, on a synthetic on-disk corpus.

The peer is upstream's read path (Megatron-LM legacy / PaddleNLP ``GPTDataset.__getitem__``: one
reader call per document piece, ``np.concatenate``, then a cast to int64), transcribed here and run
over the same indices in the same process; every sample is asserted identical.

    python benchmarks/bench_reads.py [--tokens 50000000] [--reads 20000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from llama_data.blending import BlendedDataset
from llama_data.gpt_dataset import GPTDataset
from llama_data.indexed_dataset import IndexedDatasetWriter

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from bench_figures import Figures


def write_corpus(prefix, tokens, seed):
    rng = np.random.default_rng(seed)
    lengths = np.maximum(rng.lognormal(np.log(500) - 0.5, 1.0, tokens // 400), 1).astype(np.int64)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), tokens) + 1]
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        writer.add_documents(rng.integers(0, 32_000, int(lengths.sum()), dtype=np.uint16), lengths)
    return int(lengths.sum()), len(lengths)


def upstream_getitem(ds: GPTDataset, idx: int) -> np.ndarray:
    """Upstream's __getitem__, written against the same reader (documents = sequences here)."""
    reader = ds.indexed
    idx = ds.shuffle_idx[idx]
    doc_f, off_f = ds.sample_idx[idx]
    doc_l, off_l = ds.sample_idx[idx + 1]
    if doc_f == doc_l:
        sample = reader.get(ds.doc_idx[doc_f], offset=off_f, length=off_l - off_f + 1)
    else:
        parts = [reader.get(ds.doc_idx[doc_f], offset=off_f)]
        for i in range(doc_f + 1, doc_l):
            parts.append(reader.get(ds.doc_idx[i]))
        parts.append(reader.get(ds.doc_idx[doc_l], length=off_l + 1))
        sample = np.concatenate(parts)
    return np.array(sample, dtype=np.int64)


def rate(read, indices, repeats):
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in indices:
            read(int(i))
        rates.append(len(indices) / (time.perf_counter() - start))
    return statistics.median(rates)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=50_000_000)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--reads", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    seq = args.seq_len

    with tempfile.TemporaryDirectory() as tmp:
        web, code = str(Path(tmp) / "web"), str(Path(tmp) / "code")
        n_tokens, n_docs = write_corpus(web, args.tokens, 0)
        write_corpus(code, args.tokens // 2, 1)
        gpt = GPTDataset(web, seq_len=seq, num_samples=1, split="1", seed=1)
        parts = [GPTDataset(p, seq_len=seq, num_samples=1, split="1", seed=1) for p in (web, code)]
        size = min(int(len(parts[0]) / 0.7), int(len(parts[1]) / 0.3)) - 2
        blend = BlendedDataset(parts, [0.7, 0.3], size)
        print(
            f"corpus: {n_tokens:,} tokens in {n_docs:,} documents (uint16); seq_len {seq}; "
            f"{len(gpt):,} samples; blend 0.7/0.3 of {size:,}; {args.reads:,} random reads, "
            f"median of {args.repeats}"
        )

        rng = np.random.default_rng(2)
        indices = rng.integers(0, len(gpt), args.reads)
        blend_indices = rng.integers(0, len(blend), args.reads)
        for i in indices[:2000]:
            np.testing.assert_array_equal(gpt[int(i)], upstream_getitem(gpt, int(i)))

        def upstream_blend(i):
            d = blend.dataset_index[i]
            return upstream_getitem(parts[d], int(blend.dataset_sample_index[i]))

        for i in blend_indices[:2000]:
            np.testing.assert_array_equal(blend[int(i)], upstream_blend(int(i)))

        rows = [
            (
                "single",
                "upstream read path (peer)",
                rate(lambda i: upstream_getitem(gpt, i), indices, args.repeats),
            ),
            ("single", "llama-data GPTDataset", rate(gpt.__getitem__, indices, args.repeats)),
            (
                "blend",
                "upstream read path (peer)",
                rate(upstream_blend, blend_indices, args.repeats),
            ),
            (
                "blend",
                "llama-data BlendedDataset",
                rate(blend.__getitem__, blend_indices, args.repeats),
            ),
        ]
    print(
        "\n| dataset | implementation | samples/s | tokens/s | vs peer |\n|---|---|---:|---:|---:|"
    )
    peer = {}
    figures = Figures(__file__, vars(args))
    for kind, name, r in rows:
        peer.setdefault(kind, (name, r))
        print(
            f"| {kind} | {name} | {r:,.0f} | {r * (seq + 1) / 1e6:,.1f}M | {r / peer[kind][1]:.2f}x |"
        )
        if name != peer[kind][0]:
            figures.add(
                f"{kind} dataset, seq {seq}",
                "random reads",
                "samples/s",
                name,
                r,
                peer=peer[kind][0].removesuffix(" (peer)"),
                peer_value=peer[kind][1],
                better="higher",
            )
    print("\nsamples identical to the upstream read path")


if __name__ == "__main__":
    main()

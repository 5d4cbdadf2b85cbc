"""Sample-index build time: ours (C extension, numpy twin) against fast-dataindex, same inputs.

1M documents with lognormal lengths (mean ~500 tokens), seq_len 2048, one epoch. Every timed
output is asserted identical to the peer's. Prints medians of several runs and the ratio.

    python benchmarks/bench_sample_index.py [--docs 1000000] [--repeats 11]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from fast_dataindex import helpers as peer

from llama_data.sample_index import build_sample_idx, build_sample_index

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from bench_figures import Figures


@contextlib.contextmanager
def quiet_stdout():
    """fast-dataindex prints from C++ on every call; keep it out of the table."""
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def upstream_full_build(sizes, documents, seq_len, seed):
    """Upstream's one-epoch recipe: doc_idx via mgrid + RandomState.shuffle, the C++ helper for
    sample_idx, then the shuffled sample order (Megatron-LM legacy gpt_dataset.py)."""
    tokens = int(sizes[documents].sum())
    rng = np.random.RandomState(seed=seed)
    doc_idx = np.mgrid[0:1, 0 : len(documents)][1]
    doc_idx[:] = documents
    doc_idx = doc_idx.reshape(-1).astype(np.int32)
    rng.shuffle(doc_idx)
    sample_idx = peer.build_sample_idx(sizes, doc_idx, seq_len, 1, tokens)
    shuffle_idx = np.arange(len(sample_idx) - 1, dtype=np.uint32)
    rng.shuffle(shuffle_idx)
    return doc_idx, sample_idx, shuffle_idx


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    sizes = np.maximum(rng.lognormal(np.log(500) - 0.5, 1.0, args.docs), 1).astype(np.int32)
    tokens = int(sizes.sum())
    doc_idx = np.random.RandomState(1234).permutation(args.docs).astype(np.int32)
    seq = args.seq_len
    num_samples = (tokens - 1) // seq
    print(
        f"{args.docs:,} documents, {tokens:,} tokens (mean {tokens / args.docs:.0f}), seq_len {seq}, "
        f"{num_samples:,} samples, median of {args.repeats}"
    )

    with quiet_stdout():
        t_peer, want = timed(
            lambda: peer.build_sample_idx(sizes, doc_idx, seq, 1, tokens), args.repeats
        )
        t_c, ours_c = timed(
            lambda: build_sample_idx(sizes, doc_idx, seq, 1, tokens, True), args.repeats
        )
        t_np, ours_np = timed(
            lambda: build_sample_idx(sizes, doc_idx, seq, 1, tokens, False), args.repeats
        )
    np.testing.assert_array_equal(ours_c, want)
    np.testing.assert_array_equal(ours_np, want)

    documents = np.arange(args.docs, dtype=np.int32)
    full_repeats = max(3, args.repeats // 2)
    with quiet_stdout():
        t_up, up = timed(lambda: upstream_full_build(sizes, documents, seq, 1234), full_repeats)
        t_full_c, full_c = timed(
            lambda: build_sample_index(sizes, documents, seq, num_samples, 1234, True), full_repeats
        )
        t_full_np, full_np = timed(
            lambda: build_sample_index(sizes, documents, seq, num_samples, 1234, False),
            full_repeats,
        )
    for got in (full_c, full_np):
        assert got.num_epochs == 1
        for name, expected in zip(("doc_idx", "sample_idx", "shuffle_idx"), up):
            np.testing.assert_array_equal(getattr(got, name), expected)

    rows = [
        ("sample_idx", "fast-dataindex build_sample_idx (peer)", t_peer, t_peer),
        ("sample_idx", "llama-data, C extension", t_c, t_peer),
        ("sample_idx", "llama-data, numpy fallback", t_np, t_peer),
        ("full index", "upstream recipe: RandomState + fast-dataindex (peer)", t_up, t_up),
        ("full index", "llama-data build_sample_index, C extension", t_full_c, t_up),
        ("full index", "llama-data build_sample_index, numpy fallback", t_full_np, t_up),
    ]
    print("\n| what | implementation | median ms | speed-up vs peer |\n|---|---|---:|---:|")
    figures = Figures(__file__, vars(args))
    for what, name, t, ref in rows:
        print(f"| {what} | {name} | {t * 1e3:.2f} | {ref / t:.2f}x |")
        if not name.endswith("(peer)"):
            peer_name = next(n for w, n, _, _ in rows if w == what and n.endswith("(peer)"))
            figures.add(
                f"{what}, {args.docs:,} documents, seq {seq}",
                "build time",
                "ms",
                name,
                t * 1e3,
                peer=peer_name.removesuffix(" (peer)"),
                peer_value=ref * 1e3,
                better="lower",
            )
    print("\nall outputs identical to the peer's")


if __name__ == "__main__":
    main()

"""What ``llama-data inspect`` reports about a dataset: counts, token statistics, decoded samples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llama_data.errors import DataError
from llama_data.indexed_dataset import IndexedDataset
from llama_data.tokenizer import Tokenizer

PERCENTILES = (10, 50, 90, 99)


def length_stats(lengths: np.ndarray) -> dict:
    """min / mean / percentiles / max of a length array (all zeros for an empty one)."""
    if lengths.size == 0:
        return {"min": 0, "mean": 0.0, **{f"p{q}": 0.0 for q in PERCENTILES}, "max": 0}
    qs = np.percentile(lengths, PERCENTILES)
    return {
        "min": int(lengths.min()),
        "mean": float(lengths.mean()),
        **{f"p{q}": float(v) for q, v in zip(PERCENTILES, qs)},
        "max": int(lengths.max()),
    }


def document_of(ds: IndexedDataset, seq: int) -> int:
    """The document that sequence ``seq`` belongs to."""
    return int(np.searchsorted(ds.doc_idx, seq, side="right")) - 1


def summarize(
    ds: IndexedDataset,
    tokenizer: Tokenizer | None = None,
    samples: Sequence[int] = (),
    max_chars: int = 1000,
    max_ids: int = 32,
) -> dict:
    """A JSON-able report of ``ds``; ``samples`` are sequence indices shown with their ids and, given
    a tokenizer, their text (cut to ``max_chars``, 0 for all; ``max_ids`` ids likewise)."""
    token_range = ds.token_range()
    report = {
        "prefix": ds.prefix,
        "dtype": str(ds.dtype),
        "sequences": len(ds),
        "documents": ds.num_docs,
        "tokens": ds.num_tokens,
        "idx_bytes": ds.idx_path.stat().st_size,
        "bin_bytes": ds.bin_path.stat().st_size,
        "min_token_id": None if token_range is None else token_range[0],
        "max_token_id": None if token_range is None else token_range[1],
        "document_tokens": length_stats(ds.document_lengths()),
    }
    if len(ds) != ds.num_docs:
        report["sequence_tokens"] = length_stats(ds.sizes)
    if tokenizer is not None:
        report["tokenizer"] = tokenizer.name
        report["tokenizer_vocab_size"] = tokenizer.vocab_size
    report["samples"] = [_sample(ds, i, tokenizer, max_chars, max_ids) for i in samples]
    return report


def _sample(ds: IndexedDataset, index: int, tokenizer, max_chars: int, max_ids: int) -> dict:
    n = len(ds)
    if not -n <= index < n:
        raise DataError(f"--sample {index}: the dataset has {n} sequences")
    index %= n
    ids = ds[index]
    sample = {
        "index": index,
        "document": document_of(ds, index),
        "num_tokens": int(ids.size),
        "ids": ids[: max_ids or None].tolist(),
    }
    if tokenizer is not None:
        text = tokenizer.decode(ids.tolist())
        sample["text"] = text[:max_chars] if max_chars else text
        sample["text_truncated"] = bool(max_chars) and len(text) > max_chars
    return sample


def format_report(report: dict) -> str:
    """The report as aligned text lines."""

    def stats_line(stats: dict) -> str:
        parts = [f"min {stats['min']:,}", f"mean {stats['mean']:,.1f}"]
        parts += [f"p{q} {stats[f'p{q}']:,.0f}" for q in PERCENTILES]
        parts.append(f"max {stats['max']:,}")
        return ", ".join(parts)

    lines = [
        f"dataset        {report['prefix']}",
        f"dtype          {report['dtype']}",
        f"sequences      {report['sequences']:,}",
        f"documents      {report['documents']:,}",
        f"tokens         {report['tokens']:,}",
        f"files          .idx {report['idx_bytes']:,} bytes, .bin {report['bin_bytes']:,} bytes",
        f"token ids      min {report['min_token_id']}, max {report['max_token_id']}",
        f"doc length     {stats_line(report['document_tokens'])}",
    ]
    if "sequence_tokens" in report:
        lines.append(f"seq length     {stats_line(report['sequence_tokens'])}")
    if "tokenizer" in report:
        lines.append(
            f"tokenizer      {report['tokenizer']} (vocab {report['tokenizer_vocab_size']:,})"
        )
    if "vocab_check" in report:
        check = report["vocab_check"]
        lines.append(f"vocab check    all ids < {check['vocab_size']:,}: ok")
    for s in report["samples"]:
        more = " ..." if len(s["ids"]) < s["num_tokens"] else ""
        lines.append("")
        lines.append(
            f"sequence {s['index']} (document {s['document']}, {s['num_tokens']:,} tokens)"
        )
        lines.append(f"  ids:  {' '.join(map(str, s['ids']))}{more}")
        if "text" in s:
            cut = " [...]" if s["text_truncated"] else ""
            lines.append(f"  text: {s['text']!r}{cut}")
    return "\n".join(lines)

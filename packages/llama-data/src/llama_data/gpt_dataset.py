"""GPTDataset: fixed-length training samples cut from an indexed token dataset.

Sample ``i`` is ``seq_len + 1`` token ids (int64): the model reads the first ``seq_len`` and learns
to predict the last ``seq_len``. Samples run across document boundaries, in the order given by the
shuffled index of :mod:`llama_data.sample_index`; the index is cached next to the data (see
:mod:`llama_data.index_cache`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from llama_data.errors import DataError
from llama_data.index_cache import DEFAULT_TIMEOUT, build_or_load, cache_key, fingerprint
from llama_data.indexed_dataset import IndexedDataset
from llama_data.sample_index import (
    SPLIT_NAMES,
    build_sample_index,
    split_boundaries,
)

_INDEX_ARRAYS = ("doc_idx", "sample_idx", "shuffle_idx")


def default_cache_dir(prefix: str | os.PathLike) -> Path:
    """Where indices of ``prefix`` are cached unless told otherwise: ``index-cache/`` beside it."""
    return Path(prefix).resolve().parent / "index-cache"


class GPTDataset:
    """Samples of ``seq_len + 1`` tokens from one split of an indexed dataset.

    ``data`` is a ``.bin``/``.idx`` prefix or an open :class:`IndexedDataset`. ``len()`` is the number
    of samples in the whole epochs built, at least ``num_samples`` (as upstream). Indices are read
    from ``cache_dir`` (default ``index-cache/`` beside the data) or built there by rank 0 while the
    other ranks wait (``rank`` defaults to the launcher's environment).
    """

    def __init__(
        self,
        data: str | os.PathLike | IndexedDataset,
        *,
        seq_len: int,
        num_samples: int,
        split: str = "949,50,1",
        which: str = "train",
        seed: int = 1234,
        cache_dir: str | os.PathLike | None = None,
        rank: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        use_extension: bool | None = None,
    ):
        if which not in SPLIT_NAMES:
            raise DataError(f"which must be one of {', '.join(SPLIT_NAMES)}, got {which!r}")
        if int(seq_len) < 1:
            raise DataError(f"seq_len must be at least 1, got {seq_len}")
        if int(num_samples) < 0:
            raise DataError(f"num_samples must be >= 0, got {num_samples}")
        self.indexed = data if isinstance(data, IndexedDataset) else IndexedDataset(data)
        self.prefix = getattr(self.indexed, "prefix", None)
        self.seq_len = int(seq_len)
        self.num_samples = int(num_samples)
        self.split, self.which, self.seed = split, which, int(seed)

        ds = self.indexed
        num_docs = len(ds.doc_idx) - 1
        # One sequence per document (the usual file) needs no per-document arrays at all.
        self._one_seq_per_doc = len(ds.doc_idx) == len(ds.sizes) + 1 and bool(
            np.array_equal(ds.doc_idx, np.arange(len(ds.doc_idx)))
        )
        if self._one_seq_per_doc:
            doc_sizes = ds.sizes
        else:
            lengths = ds.document_lengths()
            if len(lengths) and lengths.max() > np.iinfo(np.int32).max:
                raise DataError(f"{self.prefix}: a document holds more than 2**31 tokens")
            doc_sizes = lengths.astype(np.int32)
        self.doc_sizes = doc_sizes
        bounds = split_boundaries(split, num_docs)
        k = SPLIT_NAMES.index(which)
        self.documents = (bounds[k], bounds[k + 1])
        first, last = self.documents
        split_tokens = int(doc_sizes[first:last].sum(dtype=np.int64))
        if split_tokens == 0:
            raise DataError(
                f"{self.prefix}: the {which} split ({split!r}) holds {last - first} of {num_docs} "
                f"documents and {split_tokens} tokens; no samples can be cut from it"
            )

        key_fields = {
            "kind": "gpt-sample-index",
            "doc_sizes_sha256": fingerprint(doc_sizes),
            "documents": [first, last],
            "seq_len": self.seq_len,
            "num_samples": self.num_samples,
            "seed": self.seed,
        }
        self.cache_key = cache_key(key_fields)
        if cache_dir is None and self.prefix is not None:
            cache_dir = default_cache_dir(self.prefix)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        stem = f"{Path(self.prefix).name if self.prefix else 'data'}.{which}.{self.cache_key}"
        description = {**key_fields, "prefix": self.prefix, "split": split, "which": which}

        def build():
            documents = np.arange(first, last, dtype=np.int32)
            index = build_sample_index(
                doc_sizes, documents, self.seq_len, self.num_samples, self.seed, use_extension
            )
            arrays = {name: getattr(index, name) for name in _INDEX_ARRAYS}
            extra = {
                "num_epochs": index.num_epochs,
                "tokens_per_epoch": index.tokens_per_epoch,
                "separate_last_epoch": index.separate_last_epoch,
            }
            return arrays, extra

        entry = build_or_load(self.cache_dir, stem, description, build, rank=rank, timeout=timeout)
        # Plain ndarray views of the memory maps: np.memmap's Python-level indexing is slow per item.
        self.doc_idx, self.sample_idx, self.shuffle_idx = (
            entry.arrays[name].view(np.ndarray) for name in _INDEX_ARRAYS
        )
        self.num_epochs = int(entry.extra["num_epochs"])
        self.tokens_per_epoch = int(entry.extra["tokens_per_epoch"])
        self.separate_last_epoch = bool(entry.extra["separate_last_epoch"])
        self.cache_files = entry.paths
        self.built = entry.built
        self._tokens = ds.tokens
        self._pointers = ds.pointers
        self._itemsize = ds.dtype.itemsize
        self._len = len(self.sample_idx) - 1

    def __len__(self) -> int:
        return self._len

    def _doc_starts(self, docs: np.ndarray) -> np.ndarray:
        """Positions in the ``.bin`` token stream of the documents' first tokens."""
        seqs = docs if self._one_seq_per_doc else self.indexed.doc_idx[docs]
        # An empty last document starts at the end of the stream (and is only read for 0 tokens).
        seqs = np.minimum(seqs, len(self._pointers) - 1)
        return self._pointers[seqs] // self._itemsize

    def __getitem__(self, i: int) -> np.ndarray:
        n = self._len
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample {i} out of range for a dataset of {n} samples")
        j = int(self.shuffle_idx[i])
        (pos_first, off_first), (pos_last, off_last) = self.sample_idx[j : j + 2].tolist()
        out = np.empty(self.seq_len + 1, dtype=np.int64)
        tokens = self._tokens
        docs = self.doc_idx[pos_first : pos_last + 1]
        starts = self._doc_starts(docs).tolist()
        if pos_first == pos_last:
            start = starts[0] + off_first
            out[:] = tokens[start : start + self.seq_len + 1]
            return out
        # From off_first in the first document, whole documents between, to off_last (inclusive).
        stops = [a + n for a, n in zip(starts, self.doc_sizes[docs].tolist())]
        starts[0] += off_first
        stops[-1] = starts[-1] + off_last + 1
        filled = 0
        for start, stop in zip(starts, stops):
            count = stop - start
            out[filled : filled + count] = tokens[start:stop]
            filled += count
        return out

    def __repr__(self) -> str:
        return (
            f"GPTDataset({self.prefix!r}, which={self.which!r}, documents={self.documents}, "
            f"seq_len={self.seq_len}, samples={len(self)}, epochs={self.num_epochs})"
        )

"""GPT sample index: which tokens make up training sample i.

Same semantics, same random stream and same arrays as Megatron-LM's legacy ``gpt_dataset.py`` (and
PaddleNLP's ``causal_dataset.py``), so a run keeps the sample order it would have had upstream:

- the ``split`` string ("949,50,1") divides the documents into contiguous train/valid/test ranges;
- ``doc_idx``: the split's documents repeated for as many epochs as ``num_samples`` needs, shuffled
  with ``np.random.RandomState(seed)``; when the last epoch is needed for less than 80% of its
  samples it is shuffled apart from the others, so the first epochs stay a true permutation;
- ``sample_idx[k] = (position in doc_idx, offset)``: the first token of sample k. Sample k spans
  ``seq_len + 1`` tokens, so consecutive samples share one token (input and shifted label);
- ``shuffle_idx``: a permutation of the samples (the separate last epoch again shuffled apart).

Upstream treats every sequence of the ``.idx`` file as a document. Here a document is what the
file's ``doc_idx`` says it is (one or more sequences); files written one sequence per document,
the usual case, give exactly the upstream indices.

The loops run in a small C extension when it is installed; each has a numpy twin here that gives the
same arrays (``use_extension=False`` or ``LLAMA_DATA_NO_EXT=1`` selects it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from llama_data._native import select
from llama_data.errors import DataError

SPLIT_NAMES = ("train", "valid", "test")
_INT32_MAX = np.iinfo(np.int32).max


def parse_split(split: str) -> tuple[float, float, float]:
    """``"949,50,1"``, ``"0.9/0.1"`` or ``"1"`` -> normalised (train, valid, test) fractions."""
    text = str(split).strip()
    sep = "," if "," in text else "/"
    parts = [p.strip() for p in text.split(sep)]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise DataError(
            f"split {split!r} does not parse: expected up to three numbers like '949,50,1'"
        ) from None
    if len(values) > 3:
        raise DataError(
            f"split {split!r} has {len(values)} parts; at most three (train,valid,test)"
        )
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise DataError(f"split {split!r} has a negative or non-finite part")
    values += [0.0] * (3 - len(values))
    total = sum(values)
    if total <= 0:
        raise DataError(f"split {split!r} sums to zero")
    return (values[0] / total, values[1] / total, values[2] / total)


def split_boundaries(split: str, num_documents: int) -> tuple[int, int, int, int]:
    """Document boundaries [0, train_end, valid_end, num_documents], rounded as upstream does."""
    fractions = parse_split(split)
    bounds = [0]
    for fraction in fractions:
        bounds.append(bounds[-1] + round(fraction * float(num_documents)))
    # Rounding can overshoot or undershoot by a document or two; upstream shifts every boundary.
    diff = bounds[-1] - num_documents
    bounds = [bounds[0]] + [b - diff for b in bounds[1:]]
    return (bounds[0], bounds[1], bounds[2], bounds[3])


def num_epochs_needed(tokens_per_epoch: int, seq_len: int, num_samples: int) -> int:
    """Smallest E >= 1 with (E * tokens_per_epoch - 1) // seq_len >= num_samples."""
    if tokens_per_epoch < 1:
        raise ValueError("tokens_per_epoch must be positive")
    # (x - 1) // s >= n  <=>  x >= n * s + 1 for integers; the -1 is the token shared by samples.
    return max(1, -(-(num_samples * seq_len + 1) // tokens_per_epoch))


def samples_in(num_epochs: int, tokens_per_epoch: int, seq_len: int) -> int:
    """Number of whole samples in ``num_epochs`` epochs."""
    return (num_epochs * tokens_per_epoch - 1) // seq_len


def separate_last_epoch(
    num_epochs: int, tokens_per_epoch: int, seq_len: int, num_samples: int
) -> bool:
    """Upstream's rule: shuffle the last epoch on its own when less than 80% of it is used."""
    if num_epochs == 1:
        return False
    from_first = samples_in(num_epochs - 1, tokens_per_epoch, seq_len)
    per_epoch = (tokens_per_epoch - 1) // seq_len
    return (num_samples - from_first) < int(0.80 * per_epoch)


def shuffle_like_numpy(
    rng: np.random.RandomState, array: np.ndarray, use_extension: bool | None = None
) -> None:
    """In place, exactly ``rng.shuffle(array)`` (same permutation, same generator state after)."""
    ext = select(use_extension)
    if ext is None or array.ndim != 1 or not array.flags.c_contiguous or len(array) >= 2**32:
        rng.shuffle(array)
        return
    name, key, pos, has_gauss, gauss = rng.get_state(legacy=True)
    key = np.array(key, dtype=np.uint32, copy=True)
    pos = ext.shuffle_mt19937(key, int(pos), array)
    rng.set_state((name, key, pos, has_gauss, gauss))


def build_doc_idx(
    documents: np.ndarray,
    num_epochs: int,
    rng: np.random.RandomState,
    separate_last: bool,
    use_extension: bool | None = None,
) -> np.ndarray:
    """The documents repeated ``num_epochs`` times and shuffled (int32, as upstream)."""
    if separate_last and num_epochs > 1:
        first = build_doc_idx(documents, num_epochs - 1, rng, False, use_extension)
        last = build_doc_idx(documents, 1, rng, False, use_extension)
        return np.concatenate((first, last))
    dtype = np.int32 if len(documents) * num_epochs <= _INT32_MAX else np.int64
    doc_idx = np.tile(np.asarray(documents, dtype=dtype), num_epochs)
    shuffle_like_numpy(rng, doc_idx, use_extension)
    return doc_idx


def build_sample_idx(
    sizes: np.ndarray,
    doc_idx: np.ndarray,
    seq_len: int,
    num_epochs: int,
    tokens_per_epoch: int,
    use_extension: bool | None = None,
) -> np.ndarray:
    """[num_samples + 1, 2] array of (position in doc_idx, offset): where each sample starts.

    ``sizes[d]`` is the token count of document d; ``doc_idx`` holds document ids. Same arguments and
    output as upstream's ``helpers.build_sample_idx`` (int32 while positions fit, else int64).
    """
    if seq_len < 1:
        raise ValueError("seq_len must be at least 1")
    sizes = np.ascontiguousarray(sizes, dtype=np.int32)
    doc_idx = np.ascontiguousarray(doc_idx)
    if doc_idx.dtype not in (np.int32, np.int64):
        doc_idx = doc_idx.astype(np.int64)
    num_samples = samples_in(num_epochs, tokens_per_epoch, seq_len)
    out_dtype = np.int32 if len(doc_idx) <= _INT32_MAX else np.int64
    ext = select(use_extension)
    if ext is not None:
        out = np.empty((num_samples + 1, 2), dtype=out_dtype)
        ext.build_sample_idx(sizes, doc_idx, int(seq_len), out)
        return out
    return _build_sample_idx_numpy(sizes, doc_idx, seq_len, num_samples, out_dtype)


def _build_sample_idx_numpy(sizes, doc_idx, seq_len, num_samples, out_dtype) -> np.ndarray:
    lengths = sizes[doc_idx].astype(np.int64)
    ends = np.cumsum(lengths)
    starts = np.arange(1, num_samples + 1, dtype=np.int64) * seq_len
    if num_samples and (len(ends) == 0 or starts[-1] >= ends[-1]):
        raise ValueError(f"documents in doc_idx hold too few tokens for {num_samples} samples")
    # The document holding token p is the first whose end lies beyond p (empty ones never are).
    pos = np.searchsorted(ends, starts, side="right")
    out = np.empty((num_samples + 1, 2), dtype=out_dtype)
    out[0] = 0
    out[1:, 0] = pos
    out[1:, 1] = starts - (ends[pos] - lengths[pos])
    return out


def build_shuffle_idx(num_samples: int, total_size: int, rng, use_extension=None) -> np.ndarray:
    """Shuffled [0, num_samples) followed by shuffled [num_samples, total_size), as upstream."""
    dtype = np.uint32 if total_size < np.iinfo(np.uint32).max - 1 else np.int64
    first = np.arange(num_samples, dtype=dtype)
    shuffle_like_numpy(rng, first, use_extension)
    if num_samples == total_size:
        return first
    last = np.arange(num_samples, total_size, dtype=dtype)
    shuffle_like_numpy(rng, last, use_extension)
    return np.concatenate((first, last))


@dataclass(frozen=True)
class SampleIndex:
    """The three index arrays of one split and the numbers that produced them."""

    doc_idx: np.ndarray  # document ids in the order they are read
    sample_idx: np.ndarray  # [num_samples + 1, 2]: (position in doc_idx, token offset)
    shuffle_idx: np.ndarray  # sample order
    num_epochs: int
    tokens_per_epoch: int
    separate_last_epoch: bool

    def __len__(self) -> int:
        return len(self.sample_idx) - 1


def build_sample_index(
    doc_sizes: np.ndarray,
    documents: np.ndarray,
    seq_len: int,
    num_samples: int,
    seed: int,
    use_extension: bool | None = None,
) -> SampleIndex:
    """All three arrays for the given documents (ids into ``doc_sizes``), as upstream builds them.

    At least ``num_samples`` samples are built: whole epochs, so usually more.
    """
    if seq_len < 1:
        raise DataError(f"seq_len must be at least 1, got {seq_len}")
    if num_samples < 0:
        raise DataError(f"num_samples must be >= 0, got {num_samples}")
    doc_sizes = np.ascontiguousarray(doc_sizes, dtype=np.int32)
    documents = np.asarray(documents)
    tokens_per_epoch = int(doc_sizes[documents].sum(dtype=np.int64))
    if tokens_per_epoch < 1:
        raise DataError(f"cannot build samples from {len(documents)} documents holding no tokens")
    epochs = num_epochs_needed(tokens_per_epoch, seq_len, num_samples)
    separate = separate_last_epoch(epochs, tokens_per_epoch, seq_len, num_samples)
    rng = np.random.RandomState(seed=seed)
    doc_idx = build_doc_idx(documents, epochs, rng, separate, use_extension)
    sample_idx = build_sample_idx(
        doc_sizes, doc_idx, seq_len, epochs, tokens_per_epoch, use_extension
    )
    total = len(sample_idx) - 1
    first = samples_in(epochs - 1, tokens_per_epoch, seq_len) if separate else total
    shuffle_idx = build_shuffle_idx(first, total, rng, use_extension)
    return SampleIndex(doc_idx, sample_idx, shuffle_idx, epochs, tokens_per_epoch, separate)

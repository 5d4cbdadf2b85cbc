"""Blending several datasets by weight, Megatron style ("0.7 web 0.3 code").

The blend assigns each of its ``num_samples`` samples to a dataset by upstream's greedy rule: sample
i goes to the dataset whose count lags furthest behind ``weight * i`` (the same arrays as upstream's
``build_blending_indices``). In every prefix of n samples a dataset is never a whole sample ahead of
``weight * n``, so ``ceil(weight * n)`` samples always suffice; with two datasets it is also never a
whole sample behind (with more, upstream's rule can lag one by up to about 1.7 samples). Each dataset
is asked for its share plus upstream's 0.5% margin; the blend indices are cached like sample indices.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llama_data._native import select
from llama_data.errors import DataError
from llama_data.gpt_dataset import GPTDataset
from llama_data.index_cache import DEFAULT_TIMEOUT, build_or_load, cache_key
from llama_data.sample_index import SPLIT_NAMES

BLEND_MARGIN = 1.005  # upstream's head-room per dataset, so a blend never runs one dry


def parse_blend(spec: str | Sequence) -> list[tuple[float, str]]:
    """``"0.7 A 0.3 B"``, ``"A"``, ``["0.7", "A", ...]`` or ``[(0.7, "A"), ...]`` -> normalised pairs."""
    if isinstance(spec, (str, os.PathLike)):
        items: list = os.fspath(spec).split()
    else:
        items = []
        for item in spec:
            items.extend(item if isinstance(item, (tuple, list)) else [item])
    items = [os.fspath(x) if isinstance(x, os.PathLike) else x for x in items]
    if not items:
        raise DataError(
            "no dataset given: expected a prefix or 'WEIGHT PREFIX [WEIGHT PREFIX ...]'"
        )
    if len(items) == 1:
        return [(1.0, str(items[0]))]
    if len(items) % 2:
        raise DataError(
            f"blend {' '.join(map(str, items))!r} has {len(items)} items; expected WEIGHT PREFIX pairs"
        )
    pairs = []
    for weight, prefix in zip(items[::2], items[1::2]):
        try:
            w = float(weight)
        except (TypeError, ValueError):
            raise DataError(f"blend weight {weight!r} (for {prefix!r}) is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise DataError(f"blend weight {weight!r} (for {prefix!r}) must be >= 0 and finite")
        pairs.append((w, str(prefix)))
    total = sum(w for w, _ in pairs)
    if total <= 0:
        raise DataError("blend weights sum to zero")
    return [(w / total, p) for w, p in pairs]


def build_blending_indices(
    weights: Sequence[float], size: int, use_extension: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(dataset_index, dataset_sample_index) of length ``size``, as upstream's C++ helper returns."""
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    n = len(weights)
    dataset_index = np.zeros(size, dtype=np.uint8 if n <= 255 else np.int16)
    sample_index = np.zeros(size, dtype=np.int64)
    ext = select(use_extension)
    if ext is not None:
        ext.build_blending_indices(weights, dataset_index, sample_index)
        return dataset_index, sample_index
    # The slow twin: the same doubles in the same order (max(i, 1), first maximum wins).
    counts = [0] * n
    w = weights.tolist()
    for i in range(size):
        t = float(max(i, 1))
        best, best_err = 0, w[0] * t - counts[0]
        for d in range(1, n):
            err = w[d] * t - counts[d]
            if err > best_err:
                best, best_err = d, err
        dataset_index[i] = best
        sample_index[i] = counts[best]
        counts[best] += 1
    return dataset_index, sample_index


class BlendedDataset:
    """``num_samples`` samples drawn from ``datasets`` in proportion to ``weights``.

    ``blend[i]`` is ``datasets[dataset_index[i]][dataset_sample_index[i]]``. Indices are cached in
    ``cache_dir`` (default: the first dataset's) when every dataset has a ``cache_key``.
    """

    def __init__(
        self,
        datasets: Sequence,
        weights: Sequence[float],
        num_samples: int,
        *,
        cache_dir: str | os.PathLike | None = None,
        rank: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        use_extension: bool | None = None,
    ):
        if len(datasets) != len(weights) or not datasets:
            raise DataError(f"{len(datasets)} datasets but {len(weights)} weights")
        if len(datasets) > 32767:
            raise DataError(f"cannot blend {len(datasets)} datasets (at most 32767)")
        w = np.asarray(weights, dtype=np.float64)
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise DataError(f"blend weights {list(weights)} must be >= 0 and sum to more than 0")
        self.datasets = list(datasets)
        self.weights = w / w.sum()
        self.num_samples = int(num_samples)

        keys = [getattr(ds, "cache_key", None) for ds in self.datasets]
        if cache_dir is None:
            cache_dir = getattr(self.datasets[0], "cache_dir", None)
        if any(k is None for k in keys):
            cache_dir = None  # without a key per dataset the blend cannot be named safely
        fields = {
            "kind": "blend",
            "datasets": keys,
            "weights": [float(x).hex() for x in self.weights],
            "num_samples": self.num_samples,
        }
        self.cache_key = cache_key(fields)

        def build():
            di, si = build_blending_indices(self.weights, self.num_samples, use_extension)
            return {"dataset_index": di, "dataset_sample_index": si}, {}

        entry = build_or_load(
            cache_dir, f"blend.{self.cache_key}", fields, build, rank=rank, timeout=timeout
        )
        # Plain ndarray views of the memory maps (np.memmap indexes slowly item by item).
        self.dataset_index = entry.arrays["dataset_index"].view(np.ndarray)
        self.dataset_sample_index = entry.arrays["dataset_sample_index"].view(np.ndarray)
        self.cache_files = entry.paths
        self.built = entry.built
        self.cache_dir = None if cache_dir is None else Path(cache_dir)

        self.counts = np.bincount(self.dataset_index, minlength=len(self.datasets))
        for k, (ds, count) in enumerate(zip(self.datasets, self.counts)):
            if count > len(ds):
                raise DataError(
                    f"blend needs {count} samples from dataset {k} ({ds!r}) but it has {len(ds)}"
                )

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int):
        i = int(i)
        if i < 0:
            i += self.num_samples
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range for a blend of {self.num_samples} samples")
        return self.datasets[int(self.dataset_index[i])][int(self.dataset_sample_index[i])]

    def __repr__(self) -> str:
        parts = ", ".join(f"{w:.4g}: {ds!r}" for w, ds in zip(self.weights, self.datasets))
        return f"BlendedDataset({self.num_samples} samples; {parts})"


def build_gpt_datasets(
    data: str | Sequence,
    *,
    seq_len: int,
    num_samples: Sequence[int] | int,
    split: str = "949,50,1",
    seed: int = 1234,
    cache_dir: str | os.PathLike | None = None,
    rank: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    use_extension: bool | None = None,
) -> dict[str, GPTDataset | BlendedDataset | None]:
    """Train/valid/test datasets from one prefix or a weighted blend of prefixes.

    ``num_samples`` is ``(train, valid, test)`` (missing or 0: that split is not built, None is
    returned for it). A single prefix gives GPTDatasets; several give BlendedDatasets over
    GPTDatasets each asked for ``ceil(n * weight * 1.005)`` samples.
    """
    counts = [num_samples] if isinstance(num_samples, int) else list(num_samples)
    if len(counts) > 3:
        raise DataError(f"num_samples has {len(counts)} entries; at most (train, valid, test)")
    counts += [0] * (3 - len(counts))
    if any(c is not None and int(c) < 0 for c in counts):
        raise DataError(f"sample counts {counts} must be >= 0")
    pairs = parse_blend(data)
    common = dict(
        seq_len=seq_len, split=split, seed=seed, cache_dir=cache_dir, rank=rank, timeout=timeout,
        use_extension=use_extension,
    )  # fmt: skip
    out: dict[str, GPTDataset | BlendedDataset | None] = {}
    for which, n in zip(SPLIT_NAMES, counts):
        if not n:
            out[which] = None
            continue
        n = int(n)
        if len(pairs) == 1:
            out[which] = GPTDataset(pairs[0][1], num_samples=n, which=which, **common)
            continue
        parts = [
            GPTDataset(prefix, num_samples=math.ceil(n * w * BLEND_MARGIN), which=which, **common)
            for w, prefix in pairs
        ]
        out[which] = BlendedDataset(
            parts, [w for w, _ in pairs], n, cache_dir=cache_dir, rank=rank, timeout=timeout,
            use_extension=use_extension,
        )  # fmt: skip
    return out

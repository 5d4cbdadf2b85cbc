"""Global batches by consumed samples, from llama-data's GPT datasets (one prefix or a blend).

The train index is built for exactly ``--max-epochs`` whole epochs of the train split, whatever
``--max-steps`` says: the sample order then depends only on the data, the split, the sequence
length, the seed and the epoch count, so a run stopped at step N and resumed to 2N reads the very
samples an uninterrupted 2N run reads. Step k's global batch is samples
``[consumed, consumed + global_batch)`` of that order; every rank reads the whole global batch
(``ParallelModel.forward_backward`` splits it over dp and micro-batches itself).

The valid split gives ``eval_iters`` global batches, the first ones of its order, the same at every
evaluation so that the curve compares like with like.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from llama_data import (
    BlendedDataset,
    DataError,
    GPTDataset,
    IndexedDataset,
    build_gpt_datasets,
    parse_blend,
)
from llama_train.errors import TrainError
from llama_train.options import Data
from llama_train.run_record import RunRecord


def blend_pairs(data: Data) -> list[tuple[float, str]]:
    try:
        if data.data_weights is not None:
            return parse_blend([(w, p) for w, p in zip(data.data_weights, data.data)])
        if len(data.data) == 1:
            return parse_blend(data.data[0])
        return parse_blend([(1.0, p) for p in data.data])
    except DataError as exc:
        raise TrainError(f"--data: {exc}") from None


def check_data_files(data: Data, vocab_size: int) -> None:
    """Every prefix exists, is a valid indexed dataset, and holds only ids below ``vocab_size``."""
    for _, prefix in blend_pairs(data):
        try:
            IndexedDataset(prefix).check_vocab(vocab_size)
        except DataError as exc:
            raise TrainError(f"--data: {exc}") from None


def _samples_for_epochs(ds: GPTDataset, epochs: int) -> int:
    """The sample count for which the upstream index builds exactly ``epochs`` whole epochs."""
    return (epochs * ds.tokens_per_epoch - 1) // ds.seq_len


class TrainData:
    """The train order (and the valid batches) of a run; ``batch(consumed)`` → (input_ids, labels)."""

    def __init__(self, run: RunRecord, rank: int | None = None):
        opts = run.options
        self.epochs = opts.data.max_epochs
        self.eval_iters = opts.eval.eval_iters
        self.global_batch = run.batch_size
        self.seq_len = run.seq_len
        common = dict(
            seq_len=run.seq_len,
            split=opts.data.split,
            seed=opts.training.seed,
            cache_dir=opts.data.data_cache_dir,
            rank=rank,
        )
        pairs = blend_pairs(opts.data)
        try:
            parts = [self._epochs_dataset(prefix, self.epochs, common) for _, prefix in pairs]
            if len(parts) == 1:
                self.train = parts[0]
            else:
                # As many samples as every part can give at its weight (the blend never draws a
                # part beyond ceil(weight · n) samples).
                n = min(int((len(p) - 1) / w) for (w, _), p in zip(pairs, parts))
                self.train = BlendedDataset(parts, [w for w, _ in pairs], n, rank=rank)
            self.valid = None
            if opts.eval.eval_every:
                n_valid = self.eval_iters * self.global_batch
                self.valid = build_gpt_datasets(
                    [(w, p) for w, p in pairs], num_samples=(0, n_valid, 0), **common
                )["valid"]
        except DataError as exc:
            raise TrainError(f"--data: {exc}") from None
        self.fingerprint = self._fingerprint()

    @staticmethod
    def _epochs_dataset(prefix: str, epochs: int, common: dict) -> GPTDataset:
        one = GPTDataset(prefix, num_samples=1, which="train", **common)
        if epochs == 1:
            return one
        return GPTDataset(
            prefix, num_samples=_samples_for_epochs(one, epochs), which="train", **common
        )

    def _fingerprint(self) -> str:
        """What determines the sample order: the index's cache key (document lengths, split range,
        seq_len, sample count, seed) and the epoch count."""
        text = json.dumps(
            {"train": self.train.cache_key, "epochs": self.epochs, "seq_len": self.seq_len},
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    @property
    def num_samples(self) -> int:
        return len(self.train)

    def check_enough(self, steps: int) -> None:
        needed = steps * self.global_batch
        if needed > len(self.train):
            raise TrainError(
                f"too little data: the train split holds {len(self.train):,} samples of {self.seq_len + 1} "
                f"tokens in {self.epochs} epoch(s), but {steps:,} steps × {self.global_batch} "
                f"samples need {needed:,}; lower --max-steps, or allow more passes with --max-epochs"
            )

    def batch(self, consumed: int, dataset=None) -> tuple[np.ndarray, np.ndarray]:
        ds = self.train if dataset is None else dataset
        rows = np.stack([ds[(consumed + i) % len(ds)] for i in range(self.global_batch)])
        return rows[:, :-1], rows[:, 1:]

    def valid_batches(self):
        for k in range(self.eval_iters):
            yield self.batch(k * self.global_batch, self.valid)

"""Indexed token datasets, preprocessing and GPT sample indices for LLaMA pretraining."""

from llama_data.blending import (
    BlendedDataset,
    build_blending_indices,
    build_gpt_datasets,
    parse_blend,
)
from llama_data.errors import DataError
from llama_data.gpt_dataset import GPTDataset
from llama_data.index_cache import build_or_load
from llama_data.indexed_dataset import (
    DTYPE_CODES,
    IndexedDataset,
    IndexedDatasetWriter,
    best_dtype,
    merge_datasets,
)
from llama_data.preprocessing import PreprocessResult, preprocess
from llama_data.sample_index import (
    SampleIndex,
    build_sample_idx,
    build_sample_index,
    split_boundaries,
)
from llama_data.tokenizer import Tokenizer, load_tokenizer
from llama_data.tokenizer_training import train_tokenizer
from llama_data.version import __version__

__all__ = [
    "DTYPE_CODES",
    "BlendedDataset",
    "DataError",
    "GPTDataset",
    "IndexedDataset",
    "IndexedDatasetWriter",
    "PreprocessResult",
    "SampleIndex",
    "Tokenizer",
    "__version__",
    "best_dtype",
    "build_blending_indices",
    "build_gpt_datasets",
    "build_or_load",
    "build_sample_idx",
    "build_sample_index",
    "load_tokenizer",
    "merge_datasets",
    "parse_blend",
    "preprocess",
    "split_boundaries",
    "train_tokenizer",
]

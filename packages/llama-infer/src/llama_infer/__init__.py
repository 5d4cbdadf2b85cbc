"""Text generation for LLaMA models on PaddlePaddle: KV-cache decoding, greedy and sampling, batches."""

from llama_infer.decoding import CachedDecoder, DecodeState
from llama_infer.errors import InferError
from llama_infer.generation import Completion, Generator
from llama_infer.loading import LoadedModel, load_model
from llama_infer.sampling import SamplingConfig, next_tokens, processed_logits
from llama_infer.version import __version__

__all__ = [
    "CachedDecoder",
    "Completion",
    "DecodeState",
    "Generator",
    "InferError",
    "LoadedModel",
    "SamplingConfig",
    "__version__",
    "load_model",
    "next_tokens",
    "processed_logits",
]

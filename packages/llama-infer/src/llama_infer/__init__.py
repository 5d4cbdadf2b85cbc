"""Text generation for LLaMA models on PaddlePaddle: KV-cache decoding, greedy and sampling, batches,
in dygraph or through exported static programs.

Names that need Paddle (the generator, the decoders, the loader, the exporter) are imported on
first use: ``import llama_infer`` loads no Paddle (so the command line sets its warning filters
before Paddle loads), and serving an export directory never imports llama-model's model code. The
first of those names to load Paddle applies llama-model's ``configure_runtime()`` settings just
before (``_paddle.py``); when the application loaded Paddle itself, nothing is applied and one
warning says what that costs where it matters.
"""

from importlib import import_module

from llama_infer.errors import InferError
from llama_infer.manifest import is_export, read_manifest
from llama_infer.sampling import SamplingConfig, next_tokens, processed_logits
from llama_infer.version import __version__

_LAZY = {
    "Completion": "llama_infer.generation",
    "Generator": "llama_infer.generation",
    "DecodeState": "llama_infer.slots",
    "SlotDecoder": "llama_infer.slots",
    "CachedDecoder": "llama_infer.decoding",
    "LoadedModel": "llama_infer.loading",
    "load_model": "llama_infer.loading",
    "export_model": "llama_infer.export",
    "StaticDecoder": "llama_infer.predictor",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llama_infer' has no attribute {name!r}")


__all__ = [
    "CachedDecoder",
    "Completion",
    "DecodeState",
    "Generator",
    "InferError",
    "LoadedModel",
    "SamplingConfig",
    "SlotDecoder",
    "StaticDecoder",
    "__version__",
    "export_model",
    "is_export",
    "load_model",
    "next_tokens",
    "processed_logits",
    "read_manifest",
]

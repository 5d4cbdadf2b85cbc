"""Find, check and load the weights of a model for inference.

Accepted inputs (what ``--model`` may name):

- a model directory (``config.json`` + ``model.safetensors`` or shards + ``model.safetensors.index.json``),
  in the paddle layout (PaddleNLP names, Linear weights ``[in, out]``) or the hf layout (``model.``
  names, Linear weights ``[out, in]``);
- a training checkpoint directory (``*.metadata`` + ``*.distcp``, merged on the fly; a llama-train
  step directory only when complete), or a run's ``OUTPUT`` / ``OUTPUT/checkpoints`` directory,
  whose ``latest`` file names the checkpoint to read;
- a ``.pdparams`` file (or a directory holding one) with ``config.json`` beside it.

Reading is llama-model's (``llama_model.pretrained``, the code path ``llama-train --init-from``
uses), through llama-ckpt-tools: no pickle (a ``.pdparams``, a checkpoint's ``.distcp`` and
``.metadata``) is ever handed to ``pickle.load``: its restricted reader resolves only numpy arrays
and Paddle's metadata classes and refuses anything else before it runs, so a pickle needs no
permission to be read. Every tensor is checked against the shape ``config.json`` implies
before anything is loaded, so a mismatched directory fails in one line instead of deep in a matmul.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from llama_infer._paddle import paddle
from llama_infer.errors import InferError
from llama_model import LlamaConfig, LlamaForCausalLM, LlamaModelError
from llama_model.pretrained import PretrainedWeights


@dataclass
class LoadedModel:
    model: LlamaForCausalLM
    config: LlamaConfig
    directory: str  # where config.json (and tokenizer files, if any) were found
    kind: str  # "safetensors", "distcp" or "pdparams"
    layout: str  # "paddle" or "hf"


def open_weights(path: str) -> PretrainedWeights:
    """The weights at ``path``, opened (headers only)."""
    if not os.path.exists(path):
        raise InferError(f"model {path}: no such file or directory")
    try:
        return PretrainedWeights.open(path)
    except LlamaModelError as exc:
        raise InferError(f"model {exc}") from None


def read_config(directory: str) -> LlamaConfig:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise InferError(f"model {directory}: no config.json")
    try:
        return LlamaConfig.from_json(path)
    except LlamaModelError as exc:
        raise InferError(f"{path}: {exc}") from None


def load_model(path: str, dtype: str = "float32") -> LoadedModel:
    """Build the model of ``config.json`` and fill it from ``path``, checking every name and shape."""
    weights = open_weights(path)
    config = read_config(weights.directory)
    try:
        weights.check(config)
        with paddle.LazyGuard():  # no memory until each parameter gets its stored values
            model = LlamaForCausalLM(config)
        weights.fill(model)
    except LlamaModelError as exc:
        raise InferError(f"model {exc}") from None
    model.eval()
    if dtype != "float32":
        model.to(dtype=dtype)
    return LoadedModel(model, config, weights.directory, weights.kind, weights.layout)

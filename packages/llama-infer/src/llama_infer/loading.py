"""Find, check and load the weights of a model for inference.

Accepted inputs (what ``--model`` may name):

- a model directory (``config.json`` + ``model.safetensors`` or shards + ``model.safetensors.index.json``),
  in the paddle layout (PaddleNLP names, Linear weights ``[in, out]``) or the hf layout (``model.``
  names, Linear weights ``[out, in]``);
- a training checkpoint directory (``*.metadata`` + ``*.distcp``, merged on the fly), or a run's
  ``OUTPUT`` / ``OUTPUT/checkpoints`` directory, whose ``latest`` file names the checkpoint to read;
- a ``.pdparams`` file (or a directory holding one) with ``config.json`` beside it, only when pickles
  are allowed: a pickle can name code to run, safetensors cannot.

Reading goes through llama-ckpt-tools (no pickle is ever handed to ``pickle.load``; its restricted
reader resolves only numpy arrays). Every tensor is checked against the shape ``config.json``
implies before anything is loaded, so a mismatched directory fails in one line instead of deep in
a matmul.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from llama_ckpt import CheckpointError, from_hf_name, open_source
from llama_infer._paddle import paddle
from llama_infer.errors import InferError
from llama_model import LlamaConfig, LlamaForCausalLM, LlamaModelError

LATEST = "latest"  # llama-train's pointer to the newest complete checkpoint
# Buffers some exporters write that the model recomputes from config.json.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass
class LoadedModel:
    model: LlamaForCausalLM
    config: LlamaConfig
    directory: str  # where config.json (and tokenizer files, if any) were found
    kind: str  # "safetensors", "distcp" or "pdparams"
    layout: str  # "paddle" or "hf"


def resolve_checkpoint(path: str) -> str:
    """A run directory or its ``checkpoints/`` directory -> the checkpoint ``latest`` names."""
    for candidate in (path, os.path.join(path, "checkpoints")):
        pointer = os.path.join(candidate, LATEST)
        if os.path.isfile(pointer):
            with open(pointer, encoding="utf-8") as fh:
                name = fh.read().strip()
            step = os.path.join(candidate, name)
            if not name or not os.path.isdir(step):
                raise InferError(f"{pointer} names no checkpoint directory ({name!r})")
            return step
    return path


def open_weights(path: str, allow_pickle: bool = False):
    """The llama-ckpt source of ``path``, refusing pickles unless allowed."""
    if not os.path.exists(path):
        raise InferError(f"model {path}: no such file or directory")
    path = resolve_checkpoint(path)
    try:
        source = open_source(path)
    except CheckpointError as exc:
        raise InferError(f"model {path}: {exc}") from None
    if source_kind(source) == "pdparams" and not allow_pickle:
        raise InferError(
            f"model {path}: .pdparams is a pickle, which can run code when loaded; pass --allow-pickle "
            "if you trust it, or convert it with `llama-ckpt export` to safetensors"
        )
    return source


def source_kind(source) -> str:
    return getattr(source, "kind", "distcp")  # llama-ckpt's checkpoint reader has no kind tag


def read_config(directory: str) -> LlamaConfig:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise InferError(f"model {directory}: no config.json")
    try:
        return LlamaConfig.from_json(path)
    except LlamaModelError as exc:
        raise InferError(f"{path}: {exc}") from None


def _layout(names: list[str]) -> str:
    if any(n.startswith("llama.") for n in names):
        return "paddle"
    return "hf" if any(n.startswith("model.") for n in names) else "paddle"


def _linear_weights(model: LlamaForCausalLM) -> set[str]:
    """Parameter names of Linear layers: the ones the hf layout stores transposed."""
    return {
        f"{prefix}.weight"
        for prefix, layer in model.named_sublayers()
        if isinstance(layer, paddle.nn.Linear)
    }


def to_float32(array: np.ndarray, dtype_name: str) -> np.ndarray:
    """A stored tensor as float32; bfloat16 arrives as its uint16 bits (numpy has no bfloat16)."""
    if dtype_name == "bfloat16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    if dtype_name in ("float16", "float32", "float64"):
        return array.astype(np.float32, copy=False)
    raise InferError(f"tensor of dtype {dtype_name} cannot be model weights")


def load_model(path: str, allow_pickle: bool = False, dtype: str = "float32") -> LoadedModel:
    """Build the model of ``config.json`` and fill it from ``path``, checking every name and shape."""
    source = open_weights(path, allow_pickle)
    directory = source.config_dir()
    config = read_config(directory)
    model = LlamaForCausalLM(config)
    model.eval()
    params = dict(model.named_parameters())
    names = source.names()
    layout = _layout(names)
    transposed = _linear_weights(model) if layout == "hf" else set()
    found = {}
    for stored in names:
        name = from_hf_name(stored) if layout == "hf" else stored
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # the head is the embedding; a stored copy is not used
        if name not in params:
            raise InferError(
                f"model {path}: tensor {stored} is not a parameter of the model config.json describes"
            )
        found[name] = stored
    missing = [n for n in params if n not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InferError(f"model {path}: tensor {missing[0]} is missing{more}")
    for name, stored in found.items():
        dt, shape = source.info(stored)
        shape = tuple(reversed(shape)) if name in transposed else tuple(shape)
        expected = tuple(params[name].shape)
        if shape != expected:
            raise InferError(
                f"model {path}: {stored} has shape {list(shape)} but config.json implies {list(expected)}"
            )
    with paddle.no_grad():
        for name, stored in found.items():
            dt, _ = source.info(stored)
            array = to_float32(source.read(stored), dt.name)
            if name in transposed:
                array = np.ascontiguousarray(array.T)
            params[name].set_value(array)
    if dtype != "float32":
        model.to(dtype=dtype)
    return LoadedModel(model, config, directory, source_kind(source), layout)

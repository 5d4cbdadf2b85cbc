"""``llama-infer export``: the model's prefill and decode steps as Paddle inference programs.

Both programs are llama-model's ``functional.forward`` (as decoding.py runs it) compiled by ``paddle.jit.to_static``, with the
key/value cache as explicit inputs and outputs of a fixed capacity (slots), so a predictor keeps no
state between calls:

    inputs   input_ids [b, s] int64, positions [b*s] int64, start [1] int64,
             mask [b, 1, 1, s, s] (prefill) or [b, kv_heads, group, capacity] (decode),
             key_cache_0..L-1, value_cache_0..L-1 [b, kv_heads, capacity, d]
    outputs  logits [b, vocab] float32, then the updated key caches and value caches, same order

The prefill program leaves s open and attends over the prompt's own keys (the cache is empty before
it); the decode program fixes s = 1. The batch is open in both. Both programs hold the same
parameters; they are written once when the two saves agree byte for byte.

Two kinds of programs, named by the manifest's ``custom_ops``:

* fused (the default for a float32 export on a CPU build with llama-ops' compiled kernels): each
  decoder layer is one llama-ops operator (``kernels.fused_layers()``) over q|k|v and gate|up joined
  into one weight each (the programs' parameters: the export holds no second copy), and the final
  norm and head another. The operators write the caches they are given in place, so a predictor
  bound to a generation's caches copies in only a step's tokens, positions, slot and mask
  (predictor.py). A decode step of config T
  is 8 operators instead of about 370: per-operation overhead, which dominates a small model's
  step, is mostly gone. Serving needs llama-ops; the predictor refuses in one line without it.
* portable (``--portable``, and wherever the fused kernels cannot be used: a GPU build, bfloat16,
  no llama-ops): plain Paddle operators (``kernels.plain``), loaded by any Paddle build.

The export directory is assembled under a temporary name and renamed when complete.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import warnings

from llama_ckpt.atomic import atomic_output
from llama_infer._paddle import paddle
from llama_infer.errors import InferError
from llama_infer.manifest import (
    CUSTOM_OPS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    TOKENIZER_FILES,
    file_sizes,
    io_specs,
)
from llama_infer.version import __version__
from llama_model import LlamaForCausalLM, functional, kernels

InputSpec = paddle.static.InputSpec


class _Steps(paddle.nn.Layer):
    """The model and its rotary tables as one layer, so the programs capture all as parameters."""

    def __init__(self, model: LlamaForCausalLM, fused: bool):
        super().__init__()
        self.model = model
        weights = functional.ModelWeights(model, detach=False)
        self.register_buffer("rope_cos", weights.cos.astype(weights.dtype), persistable=True)
        self.register_buffer("rope_sin", weights.sin.astype(weights.dtype), persistable=True)
        self.ops = kernels.fused_layers() if fused else kernels.plain
        self.fused_layers = None
        if fused:  # q|k|v and gate|up joined once, as the programs' parameters (the parts unused)
            with paddle.no_grad():  # plain tensors, no autograd history
                self.fused_layers = [functional.FusedLayerWeights.of(w) for w in weights.layers]
            for i, layer in enumerate(self.fused_layers):
                self.register_buffer(f"layer{i}_qkv", layer.qkv, persistable=True)
                self.register_buffer(f"layer{i}_gate_up", layer.gate_up, persistable=True)

    def prefill(self, input_ids, positions, start, mask, key_caches, value_caches):
        return self._step(input_ids, positions, start, mask, key_caches, value_caches, fresh=True)

    def decode(self, input_ids, positions, start, mask, key_caches, value_caches):
        return self._step(input_ids, positions, start, mask, key_caches, value_caches, fresh=False)

    def _step(self, input_ids, positions, start, mask, key_caches, value_caches, fresh):
        weights = functional.ModelWeights(
            self.model, detach=False
        )  # the parameters, for the program
        if self.fused_layers is not None:
            weights.layers = self.fused_layers
        logits, keys, values = functional.forward(
            weights, self.ops, self.rope_cos, self.rope_sin, input_ids, positions, start,
            mask, key_caches, value_caches, fresh=fresh,
        )  # fmt: skip
        return [logits, *keys, *values]


def _input_specs(specs: list[dict]) -> list:
    """The manifest's input list as to_static's arguments: four tensors, then the two cache lists."""
    # A copy of each shape: InputSpec rewrites None as -1 in the list it is given.
    tensors = [InputSpec(list(s["shape"]), s["dtype"], s["name"]) for s in specs]
    layers = (len(tensors) - 4) // 2
    return [*tensors[:4], tensors[4 : 4 + layers], tensors[4 + layers :]]


def export_model(
    model: LlamaForCausalLM,
    output: str,
    *,
    capacity: int | None = None,
    tokenizer: str | None = None,
    overwrite: bool = False,
    portable: bool = False,
) -> dict:
    """Write the programs, config.json, the tokenizer files and the manifest to ``output``; returns
    the manifest. ``capacity``: cache slots (prompt + new tokens), by default the model's context.
    ``tokenizer``: a directory (its tokenizer files are copied), a ``.model`` or ``tokenizer.json``
    file, or None. ``portable``: plain Paddle operators only; otherwise, where llama-model's
    ``kernels.fused_layers_available`` finds nothing against it, each decoder layer is one llama-ops
    kernel and the final norm and head another (the manifest's ``custom_ops``)."""
    config = model.config
    context = config.max_position_embeddings
    capacity = context if capacity is None else int(capacity)
    if not 1 < capacity <= context:
        raise InferError(
            f"--max-seq-len must be between 2 and the model's context ({context}), got {capacity}"
        )
    if os.path.exists(output) and not overwrite:
        raise InferError(f"{output} exists; remove it or pass --overwrite")
    tokenizer_files = _tokenizer_files(tokenizer)
    dtype = str(model.llama.embed_tokens.weight.dtype).replace("paddle.", "")
    fused = not portable and kernels.fused_layers_available(dtype) is None
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    # Published whole or not at all (llama-ckpt-tools' atomic output: a temporary directory beside
    # it, renamed at the end; an existing export is swapped out only then).
    with atomic_output(output, overwrite=True, directory=True) as tmp:
        model.eval()
        steps = _Steps(model, fused)
        steps.eval()
        programs = {}
        for name, seq in (("prefill", None), ("decode", 1)):
            specs = io_specs(config, capacity, dtype, seq)
            fn = paddle.jit.to_static(
                getattr(steps, name), input_spec=_input_specs(specs["inputs"]), full_graph=True
            )
            with warnings.catch_warnings():  # "what you save is a function": it is meant to be
                warnings.simplefilter("ignore", UserWarning)
                paddle.jit.save(fn, os.path.join(tmp, name))
            programs[name] = {"program": f"{name}.json", "params": f"{name}.pdiparams", **specs}
        _share_params(tmp, programs)
        config.to_json(tmp)
        for src, fname in tokenizer_files:
            shutil.copy2(src, os.path.join(tmp, fname))
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_by": f"llama-infer {__version__}",
            "paddle_version": paddle.__version__,
            "dtype": dtype,
            "capacity": capacity,
            "num_layers": config.num_hidden_layers,
            "custom_ops": list(CUSTOM_OPS) if fused else [],
            "programs": programs,
            "files": file_sizes(tmp, programs),
        }
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2)
            fh.write("\n")
        for leftover in os.listdir(tmp):  # jit.save's loader metadata: the predictor needs none
            if leftover.endswith((".pdmodel.info", ".meta", ".info")):
                os.unlink(os.path.join(tmp, leftover))
    return manifest


def _tokenizer_files(tokenizer: str | None) -> list[tuple[str, str]]:
    """(source path, name in the export) of the tokenizer files to ship."""
    if tokenizer is None:
        return []
    if os.path.isdir(tokenizer):
        found = [(os.path.join(tokenizer, f), f) for f in TOKENIZER_FILES]
        return [(src, f) for src, f in found if os.path.isfile(src)]
    if os.path.isfile(tokenizer):
        if tokenizer.endswith(".model"):
            return [(tokenizer, "tokenizer.model")]
        if tokenizer.endswith(".json"):
            return [(tokenizer, "tokenizer.json")]
        raise InferError(
            f"tokenizer {tokenizer}: expected a SentencePiece .model or a tokenizer.json"
        )
    raise InferError(f"tokenizer {tokenizer}: no such file or directory")


def _share_params(directory: str, programs: dict) -> None:
    """One parameter file for both programs when the saves agree (they hold the same parameters in
    the same order); two otherwise."""
    first, second = (os.path.join(directory, p["params"]) for p in programs.values())
    if filecmp.cmp(first, second, shallow=False):
        shared = os.path.join(directory, "params.pdiparams")
        os.replace(first, shared)
        os.unlink(second)
        for p in programs.values():
            p["params"] = "params.pdiparams"

"""The export directory's contract: the manifest that names the programs and their tensors.

    export.json        this manifest (format, version, dtype, capacity, programs and their specs)
    prefill.json       the prefill program (s open)      \\ Paddle PIR programs
    decode.json        the decode program (s = 1)        /
    params.pdiparams   their parameters (or prefill.pdiparams and decode.pdiparams)
    config.json        the model's config (the HF fields)
    tokenizer files    as the source model directory had them

Reading it imports neither llama-model nor the programs' Python: a process with only Paddle and
llama-infer serves an export.
"""

from __future__ import annotations

import json
import os

from llama_infer.errors import InferError

FORMAT = "llama-infer-export"
# 2: the prefill program attends over the prompt only (mask [b,1,1,s,s]);
# 3: the decode step's mask has the scores' shape [b, kv_heads, group, capacity];
# 4: "custom_ops", the llama-ops operators the programs need (none in a portable export)
FORMAT_VERSION = 4
CUSTOM_OPS = ("fused_decoder_layer", "fused_norm_head")
MANIFEST = "export.json"
PROGRAMS = ("prefill", "decode")
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def is_export(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST))


def io_specs(config, capacity: int, dtype: str, seq: int | None) -> dict:
    """The inputs and outputs of a step program (None: an open dimension): ``seq`` None is the
    prefill (the prompt attends over itself), 1 the decode step (over the whole cache)."""
    kv = [None, config.num_key_value_heads, capacity, config.head_dim]
    layers = range(config.num_hidden_layers)

    def spec(name, shape, dt):
        return {"name": name, "shape": shape, "dtype": dt}

    caches = [spec(f"key_cache_{i}", kv, dtype) for i in layers]
    caches += [spec(f"value_cache_{i}", kv, dtype) for i in layers]
    return {
        "inputs": [
            spec("input_ids", [None, seq], "int64"),
            spec("positions", [None], "int64"),
            spec("start", [1], "int64"),
            spec("mask", _mask_shape(config, capacity, seq), dtype),
            *caches,
        ],
        "outputs": [spec("logits", [None, config.vocab_size], "float32"), *caches],
    }


def _mask_shape(config, capacity: int, seq: int | None) -> list:
    """The prefill's [b, 1, 1, s, s]; the decode step's [b, kv_heads, group, capacity] (slots.py)."""
    if seq is None:
        return [None, 1, 1, None, None]
    group = config.num_attention_heads // config.num_key_value_heads
    return [None, config.num_key_value_heads, group * seq, capacity]


def read_manifest(directory: str) -> dict:
    """The manifest of an export directory, checked: format, version, and every file it names."""
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        raise InferError(f"{directory}: no {MANIFEST}; not an export directory") from None
    except (OSError, ValueError) as exc:
        raise InferError(f"{path}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InferError(f"{path}: not a llama-infer export manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        by = manifest.get("created_by", "an unknown version")
        raise InferError(
            f"{directory} was exported by {by} in export format {version}; this llama-infer reads "
            f"format {FORMAT_VERSION}: export the model again with this version"
        )
    programs = manifest.get("programs") or {}
    for name in PROGRAMS:
        if name not in programs:
            raise InferError(f"{path}: names no {name} program; export the model again")
        for key in ("program", "params"):
            file = os.path.join(directory, str(programs[name].get(key)))
            if not os.path.isfile(file):
                raise InferError(
                    f"{file} is missing: the export is incomplete; export the model again"
                )
    if not os.path.isfile(os.path.join(directory, "config.json")):
        raise InferError(f"{directory}: no config.json; export the model again")
    return manifest

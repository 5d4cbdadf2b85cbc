"""The export directory's contract: the manifest that names the programs and their tensors.

    export.json        this manifest (format, version, dtype, capacity, programs and their specs,
                       the byte count of each program and parameter file)
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
from llama_infer.version import __version__

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


def file_sizes(directory: str, programs: dict) -> dict[str, int]:
    """The byte count of each program and parameter file the manifest names (its ``files``), so that
    a file cut short or replaced later is named before Paddle is given it."""
    names = dict.fromkeys(p[key] for p in programs.values() for key in ("program", "params"))
    return {name: os.path.getsize(os.path.join(directory, name)) for name in names}


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
    _check_version(directory, path, manifest)
    programs = manifest.get("programs")
    if not isinstance(programs, dict):
        raise InferError(f"{path}: malformed manifest (no programs); export the model again")
    for name in PROGRAMS:
        if not isinstance(programs.get(name), dict):
            raise InferError(f"{path}: names no {name} program; export the model again")
        for key in ("program", "params"):
            file = os.path.join(directory, str(programs[name].get(key)))
            if not os.path.isfile(file):
                raise InferError(
                    f"{file} is missing: the export is incomplete; export the model again"
                )
    # The programs' and parameters' sizes ("files"; exports of format 4 made by llama-infer 0.6.0
    # have none): a file cut short is named here, not by Paddle as one of the others.
    sizes = manifest.get("files", {})
    if not isinstance(sizes, dict) or not all(
        isinstance(n, int) and not isinstance(n, bool) for n in sizes.values()
    ):
        raise InferError(f"{path}: malformed manifest (files); export the model again")
    for name, size in sizes.items():
        file = os.path.join(directory, name)
        if os.path.isfile(file) and os.path.getsize(file) != size:
            raise InferError(
                f"{file} has {os.path.getsize(file)} bytes where the export wrote {size}: it was "
                "cut short or changed; export the model again"
            )
    if not os.path.isfile(os.path.join(directory, "config.json")):
        raise InferError(f"{directory}: no config.json; export the model again")
    return manifest


def _check_version(directory: str, path: str, manifest: dict) -> None:
    """An integer ``format_version``, this one: an older export is made again, a newer one needs a
    newer llama-infer."""
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        found = "no format_version" if version is None else f"format_version {version!r}"
        raise InferError(
            f"{path}: malformed manifest ({found}, expected an integer); export the model again"
        )
    if version == FORMAT_VERSION:
        return
    by = manifest.get("created_by")
    by = by if isinstance(by, str) and by else "an unknown llama-infer"
    if version < FORMAT_VERSION:
        raise InferError(
            f"{directory} was exported by {by} in export format {version}; llama-infer "
            f"{__version__} reads format {FORMAT_VERSION}: export the model again with this version"
        )
    raise InferError(
        f"{directory} was exported by {by} in export format {version}, newer than the format "
        f"{FORMAT_VERSION} llama-infer {__version__} reads: upgrade llama-infer "
        "(pip install -U llama-infer)"
    )

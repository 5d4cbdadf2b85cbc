"""`llama-ckpt export`: a model directory (safetensors shards + index + config.json) from any source.

Shards are cut by bytes (`max_shard_size`, Hugging Face's rule: a new shard starts when the next
tensor would overflow the current one; a tensor bigger than the limit gets a shard of its own), or
into `split_num` shards of about equal bytes. Tensors stream one at a time from the source into
their shard, so memory holds one tensor (twice when it is transposed or cast), never a shard.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass

import numpy as np

from . import dtypes, hf_files, layouts
from .atomic import atomic_output, check_destination
from .errors import CheckpointError
from .progress import bar
from .safetensors_io import SafetensorsWriter
from .sources import INDEX, Canonical, open_source

# Copied from beside config.json when there: the tokenizer's files and generation defaults.
COPIED_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str | int) -> int:
    """'5GB' -> 5_000_000_000 (decimal units as Hugging Face; KiB/MiB/GiB binary)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise CheckpointError(f"cannot read the size {text!r} (examples: 5GB, 500MB, 2GiB)")
    size = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if size <= 0:
        raise CheckpointError(f"the shard size must be positive, got {text!r}")
    return size


@dataclass
class OutTensor:
    source_name: str  # paddle (canonical) name
    name: str  # name in the output layout
    dtype: dtypes.DType  # after the cast
    shape: tuple[int, ...]  # after the layout's transposition

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def split_by_size(tensors: list[OutTensor], max_bytes: int) -> list[list[OutTensor]]:
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def split_by_count(tensors: list[OutTensor], n: int) -> list[list[OutTensor]]:
    """`n` shards in order, each closing once the running total passes its share of the bytes."""
    if n < 1:
        raise CheckpointError("--split-num must be at least 1")
    if n > len(tensors):
        raise CheckpointError(f"--split-num {n} is more than the {len(tensors)} tensors")
    total = sum(t.nbytes for t in tensors)
    shards: list[list[OutTensor]] = [[] for _ in range(n)]
    done, shard = 0, 0
    for i, t in enumerate(tensors):
        remaining = len(tensors) - i
        # move on once this shard has its share, or when each later shard needs one of the rest
        if (
            shards[shard]
            and shard < n - 1
            and (done >= total * (shard + 1) / n or remaining == n - 1 - shard)
        ):
            shard += 1
        shards[shard].append(t)
        done += t.nbytes
    return [s for s in shards if s]


def shard_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def _load_config(source, config: str | None) -> tuple[dict, str | None]:
    path = config or os.path.join(source.config_dir(), "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"no config.json next to the checkpoint ({path}); pass --config")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return cfg, path


def _plan(
    source: Canonical, layout: str, cast_to: dtypes.DType | None, tied: bool
) -> list[OutTensor]:
    out = []
    for name in source.names():
        dt, shape = source.info(name)
        if layout == layouts.HF and tied and name == layouts.LM_HEAD:
            continue  # transformers re-ties lm_head to the embedding; its files leave it out
        if cast_to is not None and dt.is_float:
            dt = cast_to
        if layout == layouts.HF:
            out.append(
                OutTensor(name, layouts.to_hf_name(name), dt, layouts.to_hf_shape(name, shape))
            )
        else:
            out.append(OutTensor(name, name, dt, tuple(shape)))
    return out


def _check_tied(source: Canonical) -> None:
    if layouts.LM_HEAD not in source.names() or layouts.EMBED not in source.names():
        return
    head, embed = source.read(layouts.LM_HEAD), source.read(layouts.EMBED)
    if head.shape != embed.shape:
        head = head.T
    if head.shape != embed.shape or head.tobytes() != embed.tobytes():
        raise CheckpointError(
            "config.json says tie_word_embeddings, but lm_head.weight differs "
            "from llama.embed_tokens.weight"
        )


def _out_config(cfg: dict, layout: str, tensors: list[OutTensor]) -> dict:
    cfg = dict(cfg)
    floats = [t.dtype.name for t in tensors if t.dtype.is_float]
    if layout == layouts.HF:
        cfg.setdefault("model_type", "llama")
        cfg.setdefault("architectures", ["LlamaForCausalLM"])
        if floats:
            cfg["torch_dtype"] = max(set(floats), key=floats.count)
    elif floats:
        cfg["dtype"] = max(set(floats), key=floats.count)
    return cfg


@dataclass
class ExportResult:
    path: str
    files: list[str]
    tensors: int
    nbytes: int


def export(
    src: str,
    out_dir: str,
    layout: str = layouts.PADDLE,
    max_shard_size: str | int = "5GB",
    split_num: int | None = None,
    dtype: str | None = None,
    config: str | None = None,
    prefix: str | None = None,
    unique_id: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> ExportResult:
    if layout not in layouts.LAYOUTS:
        raise CheckpointError(f"unknown layout {layout!r} (choose {', '.join(layouts.LAYOUTS)})")
    cast_to = None
    if dtype is not None:
        if dtype not in dtypes.CAST_TARGETS:
            raise CheckpointError(f"--dtype must be one of {', '.join(dtypes.CAST_TARGETS)}")
        cast_to = dtypes.dtype(dtype)
    max_bytes = parse_size(max_shard_size)
    check_destination(out_dir, overwrite)
    source = Canonical(open_source(src, prefix=prefix, unique_id=unique_id))
    cfg, cfg_path = _load_config(source, config)
    tied = bool(cfg.get("tie_word_embeddings", False))
    if layout == layouts.HF and tied:
        _check_tied(source)
    tensors = _plan(source, layout, cast_to, tied)
    if not tensors:
        raise CheckpointError(f"{src} holds no tensor")
    written = _hf_files(os.path.dirname(cfg_path), cfg) if layout == layouts.HF else {}
    shards = split_by_count(tensors, split_num) if split_num else split_by_size(tensors, max_bytes)
    files = shard_names(len(shards))
    total = sum(t.nbytes for t in tensors)
    st_format = "pt" if layout == layouts.HF else "np"
    with (
        atomic_output(out_dir, overwrite, directory=True) as tmp,
        bar(total, "export", progress) as pbar,
    ):
        weight_map = {}
        for file, shard in zip(files, shards):
            writer = SafetensorsWriter(
                os.path.join(tmp, file),
                [(t.name, t.dtype, t.shape) for t in shard],
                metadata={"format": st_format},
            )
            try:
                for t in shard:
                    _write_one(source, t, layout, writer)
                    weight_map[t.name] = file
                    pbar.update(t.nbytes)
                writer.close()
            except BaseException:
                writer.abort()
                raise
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _write_json(os.path.join(tmp, INDEX), index)
        _write_json(os.path.join(tmp, "config.json"), _out_config(cfg, layout, tensors))
        for name in COPIED_FILES:
            found = os.path.join(os.path.dirname(cfg_path), name)
            if os.path.isfile(found):
                shutil.copyfile(found, os.path.join(tmp, name))
        for name, content in written.items():
            _write_json(os.path.join(tmp, name), content)
    return ExportResult(out_dir, files, len(tensors), total)


def _hf_files(directory: str, cfg: dict) -> dict[str, dict]:
    """``tokenizer_config.json`` and ``generation_config.json`` for an hf export, each unless
    ``directory`` (beside the source's config.json) has its own, which is copied instead."""
    tokens = hf_files.special_tokens(directory)
    out = {}
    if tokens is not None and not os.path.isfile(
        os.path.join(directory, hf_files.TOKENIZER_CONFIG)
    ):
        max_length = cfg.get("max_position_embeddings")
        out[hf_files.TOKENIZER_CONFIG] = hf_files.tokenizer_config(
            tokens, max_length if isinstance(max_length, int) else None
        )
    if not os.path.isfile(os.path.join(directory, hf_files.GENERATION_CONFIG)):
        ids = hf_files.generation_config(tokens, cfg)
        if ids:
            out[hf_files.GENERATION_CONFIG] = ids
    return out


def _write_one(source: Canonical, t: OutTensor, layout: str, writer: SafetensorsWriter) -> None:
    array = source.read(t.source_name)
    src_dtype = source.info(t.source_name)[0]
    if src_dtype.name != t.dtype.name:
        array = dtypes.cast(array, src_dtype, t.dtype)
    if layout == layouts.HF:
        array = layouts.to_hf(t.source_name, array)[1]
    writer.write(t.name, array)


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")

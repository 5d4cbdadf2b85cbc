"""Initial weights from an existing model: a Hugging Face or PaddleNLP directory, a file, a checkpoint.

``PretrainedWeights.open(path)`` accepts what llama-ckpt-tools reads: a model directory
(``config.json`` + ``model.safetensors`` or shards named by ``model.safetensors.index.json``) in the
hf layout (``model.`` names, Linear weights ``[out, in]``) or the paddle layout (PaddleNLP names,
``[in, out]``); one ``.safetensors`` or ``.pdparams`` file (read by the restricted unpickler, which
resolves nothing but numpy arrays); a llama-train checkpoint (a step directory with its COMPLETE
marker, or a run directory, whose ``latest`` names one: its weights only). Nothing here runs a
pickle's code and nothing reads tensor data before ``fill``.

``check(config)`` compares every stored name and shape with the model ``config`` describes and
refuses in one line. ``fill(module)`` then gives each parameter of a module (a whole model, a
pipeline stage, plain or placed by the plan) its values, reading for each only the part this rank
holds: a tensor-parallel shard is a slice of rows or columns read at its offsets in the file
(``llama_ckpt.Canonical.read_slice``), converted to float32 from bf16/fp16 and transposed where the
layout needs it. Built under ``paddle.LazyGuard`` (``ParallelModel.build(weights=...)``) a rank's
parameters take no memory until filled, so its peak is its share of the model plus one slice.
"""

from __future__ import annotations

import os

import numpy as np

from llama_model._paddle import paddle
from llama_model.config import LlamaConfig
from llama_model.errors import LlamaModelError
from llama_model.paddle_compat import tensors

# Buffers some exporters write that the model recomputes from config.json.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
LAYOUTS = ("hf", "paddle")
_FLOAT_DTYPES = ("bfloat16", "float16", "float32", "float64")


class PretrainedWeights:
    """The weights at ``path``, opened and named, not read yet (``open``, ``check``, ``fill``)."""

    def __init__(self, path: str, source, kind: str):
        self.path = path  # what was opened (a run directory resolves to its latest checkpoint)
        self.source = source  # llama_ckpt.Canonical: paddle names and orientation
        self.kind = kind  # "safetensors", "pdparams" or "distcp"
        self._plan: dict[str, str] | None = None  # parameter name -> stored name, after check()

    # -------------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str, layout: str | None = None) -> PretrainedWeights:
        """Open ``path`` (see the module docstring); ``layout`` "hf" or "paddle" overrides the
        detection from the names. Raises LlamaModelError (one line) on anything unreadable."""
        from llama_ckpt import Canonical, CheckpointError, open_source
        from llama_ckpt.runs import resolve_checkpoint

        if layout is not None and layout not in LAYOUTS:
            raise LlamaModelError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if not os.path.exists(path):
            raise LlamaModelError(f"{path}: no such file or directory")
        try:
            resolved = resolve_checkpoint(path)
            raw = open_source(resolved)
            source = Canonical(raw, layout=layout, strict=True)
        except CheckpointError as exc:
            raise LlamaModelError(_with_path(str(exc), path)) from None
        return cls(resolved, source, getattr(raw, "kind", "distcp"))

    @property
    def layout(self) -> str:
        return self.source.layout

    @property
    def directory(self) -> str:
        """Where ``config.json`` (and tokenizer files) of these weights would be."""
        return self.source.config_dir()

    def config(self) -> LlamaConfig | None:
        """The model config stored beside the weights (``config.json``), or None if there is none."""
        file = os.path.join(self.directory, "config.json")
        if not os.path.isfile(file):
            return None
        try:
            return LlamaConfig.from_json(file)
        except LlamaModelError as exc:
            raise LlamaModelError(f"{file}: {exc}") from None

    def record(self) -> dict:
        """What a run writes down about its initial weights: path, format, layout and a digest of
        the index and headers (it changes with any tensor's name, dtype, shape or place)."""
        from llama_ckpt import digest

        return {
            "path": os.path.abspath(self.path),
            "format": self.kind,
            "layout": self.layout,
            "digest": "sha256:" + digest(self.source.source),
        }

    # ------------------------------------------------------------------------------- checking
    def check(self, config: LlamaConfig) -> None:
        """Every tensor against the model ``config`` describes: names (missing and extra ones
        listed), shapes (in the stored orientation) and dtypes. One line on the first problem."""
        expected = expected_shapes(config)
        found: dict[str, str] = {}
        extra = []
        for name in self.source.names():
            if name.endswith(IGNORED_SUFFIXES):
                continue
            if name == "lm_head.weight" and config.tie_word_embeddings:
                continue  # the head is the embedding (tied): a stored copy is not used
            if name in expected:
                found[name] = self.source.stored_name(name)
            else:
                extra.append(self.source.stored_name(name))
        missing = [_stored(self.layout, n) for n in expected if n not in found]
        if missing:
            raise LlamaModelError(
                f"{self.path}: tensor {missing[0]} is missing{_listed(missing, 'missing')}"
            )
        if extra:
            hint = " (is the layout right?)" if not found else ""
            raise LlamaModelError(
                f"{self.path}: tensor {extra[0]} is not a parameter of the model config.json "
                f"describes{_listed(extra, 'such')}{hint}"
            )
        for name, shape in expected.items():
            dt, stored_shape = self.source.info(name)
            if dt.name not in _FLOAT_DTYPES:
                raise LlamaModelError(
                    f"{self.path}: {found[name]} is {dt.name}, not a float tensor"
                )
            if tuple(stored_shape) != shape:
                _, raw_shape = self.source.source.info(found[name])
                want = (
                    list(reversed(shape)) if list(raw_shape) != list(stored_shape) else list(shape)
                )
                raise LlamaModelError(
                    f"{self.path}: {found[name]} has shape {list(raw_shape)} but config.json "
                    f"implies {want}"
                )
        self._plan = found

    # -------------------------------------------------------------------------------- filling
    def fill(self, module) -> None:
        """Give every parameter of ``module`` its stored values (the part this rank holds of a
        placed one), as float32; ``check`` must have passed for the module's config."""
        if self._plan is None:
            raise LlamaModelError("PretrainedWeights.check(config) must run before fill()")
        with paddle.no_grad():
            for name, param in module.named_parameters():
                if name not in self._plan:
                    raise LlamaModelError(f"{self.path}: no stored tensor for parameter {name}")
                self._fill_one(name, param)

    def _fill_one(self, name: str, param) -> None:
        dt, shape = self.source.info(name)
        if not param.is_dist():
            tensors.give_storage(param, _to_paddle(_float32(self.source.read(name), dt)))
            return
        axis, start, stop = local_slice(param, shape)
        if axis is None:
            array = self.source.read(name)
        else:
            array = self.source.read_slice(name, axis, start, stop)
        local = _to_paddle(_float32(array, dt))
        placed = tensors.dist_from_local(local, param.process_mesh, param.placements)
        tensors.give_storage(param, placed)


def expected_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape ([in, out] Linear weights) of the whole model ``config`` describes,
    from a model built without memory (``paddle.LazyGuard``)."""
    from llama_model.model import LlamaForCausalLM

    with paddle.LazyGuard():
        model = LlamaForCausalLM(config)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def local_slice(param, global_shape) -> tuple[int | None, int, int]:
    """(axis, start, stop) of the global tensor that this rank's shard of dist ``param`` holds;
    axis None when it holds all of it (replicated on every mesh axis)."""
    mesh, placements = param.process_mesh, param.placements
    rank = paddle.distributed.get_rank()
    coords = np.unravel_index(mesh.process_ids.index(rank), mesh.shape)
    axis, start, stop = None, 0, 0
    for mesh_axis, placement in enumerate(placements):
        if not placement.is_shard():
            continue
        dim = placement.get_dim()
        parts = mesh.shape[mesh_axis]
        if axis is not None or global_shape[dim] % parts:
            raise LlamaModelError(
                f"cannot read a shard of {list(global_shape)} split {placements} over {mesh.shape}"
            )
        size = global_shape[dim] // parts
        axis, start = dim, int(coords[mesh_axis]) * size
        stop = start + size
    return axis, start, stop


def _to_paddle(array: np.ndarray):
    # On CPU the tensor takes the array's memory (DLPack, no copy): a slice is held once, not
    # twice, while it becomes a parameter. A GPU copies it to the device anyway.
    if paddle.get_device() == "cpu":
        return paddle.from_dlpack(array if array.flags.writeable else array.copy())
    return paddle.to_tensor(array)


def _float32(array: np.ndarray, dt) -> np.ndarray:
    from llama_ckpt import to_float32

    return np.ascontiguousarray(to_float32(array, dt))


def _listed(names: list[str], what: str, shown: int = 4) -> str:
    """`` (N what: a, b, c, d and M more)`` when there is more than one name."""
    if len(names) < 2:
        return ""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f" ({len(names)} {what}: {', '.join(names[:shown])}{more})"


def _stored(layout: str, name: str) -> str:
    """A parameter's name as the given layout stores it."""
    from llama_ckpt import to_hf_name

    return to_hf_name(name) if layout == "hf" else name


def _with_path(message: str, path: str) -> str:
    return message if path in message else f"{path}: {message}"

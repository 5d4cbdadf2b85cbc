"""Generation from an export directory through Paddle's inference engine (``paddle.inference``).

``StaticDecoder`` has the interface of the dygraph ``CachedDecoder`` (slots.py keeps the masks and
positions of both), but its steps are the exported prefill and decode programs. A portable export's
programs take the caches in and hand updated ones out, as paddle tensors, at each call. A fused
export's programs write the caches they are given in place: the decode predictor is bound to a
generation's caches once, and a step copies in only its tokens, positions, slot and mask. Nothing
here imports llama-model; llama-ops is imported only for a fused export.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np

from llama_infer._paddle import paddle
from llama_infer.errors import InferError
from llama_infer.manifest import read_manifest
from llama_infer.slots import DecodeState, SlotDecoder
from llama_infer.threads import physical_cores

CONFIG_FIELDS = ("vocab_size", "max_position_embeddings", "eos_token_id", "pad_token_id")


def read_export_config(directory: str) -> SimpleNamespace:
    """The config.json fields generation needs, without llama-model's LlamaConfig."""
    path = os.path.join(directory, "config.json")
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (OSError, ValueError) as exc:
        raise InferError(f"{path}: unreadable ({exc})") from None
    missing = [f for f in CONFIG_FIELDS[:2] if not isinstance(raw.get(f), int)]
    if missing:
        raise InferError(f"{path}: no integer {missing[0]}")
    return SimpleNamespace(**{f: raw.get(f) for f in CONFIG_FIELDS})


def _predictor(directory: str, program: dict, threads: int | None):
    config = paddle.inference.Config(
        os.path.join(directory, program["program"]), os.path.join(directory, program["params"])
    )
    if paddle.is_compiled_with_cuda():
        config.enable_use_gpu(256, 0)
    else:
        config.disable_gpu()
        # oneDNN's passes made the decode step ~20% slower than Paddle's own CPU kernels on config T,
        # and its reduce_mean check prints to stdout, which would corrupt JSON output.
        config.disable_onednn()
        config.set_cpu_math_library_num_threads(int(threads or physical_cores()))
    config.disable_glog_info()
    try:
        return paddle.inference.create_predictor(config)
    except Exception as exc:  # Paddle raises its own error types for unreadable programs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = _unloadable(directory, program, first)
        raise InferError(f"{where}: Paddle cannot load it ({first})") from None


# What Paddle's loaders say about each file (Paddle 3.3.1): the PIR program's JSON reader, and the
# parameters' load_combine (a file cut short, or with bytes after the last tensor).
_PROGRAM_ERRORS = ("json.exception", "Invalid model file", "serialize_deserialize")
_PARAMS_ERRORS = ("load_combine", "tensor desc", "Cannot read")


def _unloadable(directory: str, program: dict, error: str) -> str:
    """The file Paddle could not load, told by its error (read_manifest has already compared both
    files' sizes with the export's where the manifest records them); both when it does not say."""
    program_file = os.path.join(directory, program["program"])
    params_file = os.path.join(directory, program["params"])
    if any(marker in error for marker in _PROGRAM_ERRORS):
        return program_file
    if any(marker in error for marker in _PARAMS_ERRORS):
        return f"{params_file} (the parameters of {program['program']})"
    return f"{program_file} or its parameters {params_file}"


def _register_custom_ops(directory: str, manifest: dict) -> None:
    """Registers the llama-ops operators the programs name with Paddle, before they are loaded."""
    needed = manifest.get("custom_ops") or []
    if not needed:
        return
    if paddle.is_compiled_with_cuda():
        raise InferError(
            f"{directory} was exported for the CPU (llama-ops' fused decoder layer); for a GPU, "
            "export again with --portable"
        )
    try:
        from llama_ops._library import LIB, OPS
    except ImportError:
        raise InferError(
            f"{directory} needs llama-ops (its programs use {', '.join(needed)}): pip install "
            "llama-ops, or export again with --portable"
        ) from None
    missing = [op for op in needed if op not in OPS]
    if not LIB.loaded or missing:
        why = LIB.reason if not LIB.loaded else f"this llama-ops lacks {', '.join(missing)}"
        raise InferError(
            f"{directory} needs llama-ops' compiled {', '.join(needed)}: {why}; or export again "
            "with --portable"
        )


class _BoundStep:
    """The decode program's inputs bound to one generation's state (programs that write their
    caches in place): the caches shared once, the per-step inputs copied in by ``feed``, the logits
    read from their output handle. ``run(list)`` wraps every input and output tensor on each call:
    with it, 0.4 ms of config T's 1.3 ms step went around the program."""

    def __init__(self, program, state: DecodeState):
        handles = [program.get_input_handle(name) for name in program.get_input_names()]
        self.ids, self.positions, self.start, self.mask = handles[:4]
        for handle, cache in zip(handles[4:], [*state.keys, *state.values], strict=True):
            handle.share_external_data(cache)
        # The mask lives on the host with the state (a column opened per step, copied in whole), so
        # a generation bound again after another one's steps keeps the slots it opened.
        if state.host_mask is None:
            state.host_mask = state.mask.numpy()
        self.logits = program.get_output_handle(program.get_output_names()[0])
        self.state = state
        self._slot = np.zeros(1, np.int64)

    def feed(self, ids: np.ndarray, positions: np.ndarray, slot: int) -> None:
        self._slot[0] = slot
        self.state.host_mask[:, :, :, slot] = 0.0
        self.ids.copy_from_cpu(ids)
        self.positions.copy_from_cpu(positions)
        self.start.copy_from_cpu(self._slot)
        self.mask.copy_from_cpu(self.state.host_mask)


class StaticDecoder(SlotDecoder):
    """KV-cache decoding through an export directory's prefill and decode programs."""

    def __init__(self, directory: str, threads: int | None = None):
        manifest = read_manifest(directory)
        self.directory = directory
        self.manifest = manifest
        self.capacity = int(manifest["capacity"])
        self.num_layers = int(manifest["num_layers"])
        programs = manifest["programs"]
        inputs = programs["decode"]["inputs"]
        kv_shape = inputs[4]["shape"]  # [b, kv_heads, capacity, head_dim]
        self.num_kv_heads, self.head_dim = int(kv_shape[1]), int(kv_shape[3])
        self.group = int(inputs[3]["shape"][2])  # the mask: [b, kv_heads, group, capacity]
        self.dtype = getattr(paddle, manifest["dtype"])
        if self.dtype != paddle.float32 and not paddle.is_compiled_with_cuda():
            raise InferError(
                f"{directory} holds {manifest['dtype']} programs, which need a GPU: Paddle's CPU "
                "build has no such matmul kernels; export with --dtype float32"
            )
        _register_custom_ops(directory, manifest)
        self.in_place = bool(manifest.get("custom_ops"))
        self._bound = None  # the decode program's inputs, bound to the current generation
        self.prefill_program = _predictor(directory, programs["prefill"], threads)
        self.decode_program = _predictor(directory, programs["decode"], threads)

    def cache_len(self, needed: int) -> int:
        if needed > self.capacity:
            raise InferError(
                f"{needed} slots (prompt + new tokens) exceed the export's capacity of "
                f"{self.capacity}: shorten the prompt or max_new_tokens, or export again with a "
                "larger --max-seq-len"
            )
        return self.capacity  # the programs' cache dimension is fixed

    def _decode(self, state: DecodeState, ids: np.ndarray, positions: np.ndarray, slot: int):
        if not self.in_place:
            return super()._decode(state, ids, positions, slot)
        # The programs write the caches they are given: bound once per generation, they stay in
        # place, and a step copies in only the new tokens, their positions, the slot and the mask.
        if self._bound is None or self._bound.state is not state:
            self._bound = _BoundStep(self.decode_program, state)
        self._bound.feed(ids, positions, slot)
        self.decode_program.run()
        return self._bound.logits.copy_to_cpu()

    def _forward(
        self, ids, positions, start: int, mask, state: DecodeState, fresh: bool
    ) -> np.ndarray:
        program = self.prefill_program if fresh else self.decode_program
        start = paddle.to_tensor([start], dtype="int64")
        if fresh:
            self._bound = None  # the last generation's caches are not held through this one
        outputs = program.run([ids, positions, start, mask, *state.keys, *state.values])
        if self.in_place and outputs[1].data_ptr() == state.keys[0].data_ptr():
            return outputs[0].numpy()  # the programs wrote the caches they were given
        if self.in_place:  # a Paddle that copies what it is fed: take the caches it hands out
            self.in_place = False
        layers = self.num_layers
        state.keys = outputs[1 : 1 + layers]
        state.values = outputs[1 + layers :]
        return outputs[0].numpy()

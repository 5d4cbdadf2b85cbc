"""Generation from an export directory through Paddle's inference engine (``paddle.inference``).

``StaticDecoder`` has the interface of the dygraph ``CachedDecoder`` (slots.py keeps the masks and
positions of both), but its steps are the exported prefill and decode programs: each call hands the
caches in and takes the updated caches out, as paddle tensors, so nothing goes through numpy but
the logits. Nothing here imports llama-model.
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
        raise InferError(
            f"{directory}/{program['program']}: Paddle cannot load it ({first})"
        ) from None


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

    def _forward(
        self, ids, positions, start: int, mask, state: DecodeState, fresh: bool
    ) -> np.ndarray:
        program = self.prefill_program if fresh else self.decode_program
        start = paddle.to_tensor([start], dtype="int64")
        outputs = program.run([ids, positions, start, mask, *state.keys, *state.values])
        layers = self.num_layers
        state.keys = outputs[1 : 1 + layers]
        state.values = outputs[1 + layers :]
        return outputs[0].numpy()

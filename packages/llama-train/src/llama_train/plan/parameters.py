"""Each rank's parameters, from the model's own sources: the parameter shapes of the model built
without memory (``llama_model.pretrained.expected_shapes``, ``paddle.LazyGuard``), the stage split
of the Strategy (``layer_split``, ``chunk_layers``) and the tensor-parallel plan
(``llama_model.plan.style_of``: column-parallel weights split their output axis over mp, row-
parallel ones their input axis, the rest are whole on every mp rank). Nothing is counted twice by
hand: a change of the model, the stage split or the plan changes the counts.

ZeRO sharding over dp (``--sharding-stage``) splits a tensor as Paddle's ``ShardingStage1/2/3``
place it (``paddle.distributed.auto_parallel.sharding.get_placement_with_sharding``): along the
first axis that mp does not split, ⌈size / dp⌉ on the first dp ranks; a tensor with no such axis
(an mp-split vector) stays whole.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import cache

from llama_model import LlamaConfig, Strategy

_LAYER = re.compile(r"^llama\.layers\.(\d+)\.")
_MATMUL = re.compile(r"(_proj|lm_head)\.weight$")


@dataclass(frozen=True)
class Tensor:
    """One parameter as one rank of its stage holds it."""

    name: str
    shape: tuple[int, ...]  # the rank's shard (mp split applied)
    dp_axis: int | None  # the axis ZeRO sharding splits over dp; None: never split
    layer: int | None  # its decoder layer; None for the embedding, the final norm and the head

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    def sharded_elements(self, dp: int) -> int:
        """Elements on the largest dp rank once ZeRO sharding splits this tensor over ``dp``."""
        if self.dp_axis is None or dp == 1:
            return self.elements
        shape = list(self.shape)
        shape[self.dp_axis] = -(-shape[self.dp_axis] // dp)
        return math.prod(shape)

    @property
    def matmul(self) -> bool:
        """A weight that a matrix product reads (a Linear's, or the head's)."""
        return bool(_MATMUL.search(self.name))


@cache
def _full_model(config_json: str) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    from llama_model import plan
    from llama_model.pretrained import expected_shapes

    config = LlamaConfig.from_dict(json.loads(config_json))
    return tuple((n, shape, plan.style_of(n)) for n, shape in expected_shapes(config).items())


def full_model(config: LlamaConfig) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """(name, global shape, tensor-parallel style) of every parameter of the whole model."""
    return _full_model(json.dumps(config.to_dict(), sort_keys=True))


def _local(shape: tuple[int, ...], style: str, mp: int) -> tuple[tuple[int, ...], int | None]:
    """The mp shard's shape and the axis left for ZeRO sharding."""
    from llama_model.plan import COLWISE, ROWWISE

    split = {COLWISE: 1, ROWWISE: 0}.get(style)
    local = list(shape)
    if split is not None:
        local[split] //= mp
    dp_axis = next((axis for axis in range(len(shape)) if axis != split), None)
    return tuple(local), dp_axis


@cache
def _chunk_tensors(config_json: str, mp: int, layers: tuple[int, ...], first: bool, last: bool):
    out = []
    for name, shape, style in _full_model(config_json):
        match = _LAYER.match(name)
        layer = int(match.group(1)) if match else None
        if layer is not None:
            held = layer in layers
        elif name.startswith("llama.embed_tokens"):
            held = first
        else:  # the final norm and the head
            held = last
        if held:
            local, dp_axis = _local(shape, style, mp)
            out.append(Tensor(name, local, dp_axis, layer))
    return tuple(out)


def chunk_tensors(config: LlamaConfig, strategy: Strategy, chunk: int) -> tuple[Tensor, ...]:
    """The parameters of pipeline chunk ``chunk`` (a stage, or one of a VPP stage's chunks) on
    one of its mp ranks."""
    layers = tuple(strategy.chunk_layers(config.num_hidden_layers)[chunk])
    config_json = json.dumps(config.to_dict(), sort_keys=True)
    return _chunk_tensors(
        config_json, strategy.mp, layers, chunk == 0, chunk == strategy.chunks - 1
    )


def stage_tensors(config: LlamaConfig, strategy: Strategy, stage: int) -> tuple[Tensor, ...]:
    """The parameters one rank of pipeline stage ``stage`` holds: its chunks' (one without VPP)."""
    return tuple(
        t for c in strategy.stage_chunks(stage) for t in chunk_tensors(config, strategy, c)
    )

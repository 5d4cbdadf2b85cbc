"""The parallel layout: data (dp), tensor/model (mp) and pipeline (pp) degrees, and how pipelining runs.

``Strategy.parse("dp2mp2pp2")`` accepts the axes in any order; a missing axis has degree 1. The mesh
is always ``[pp, dp, mp]`` (DESIGN §3): a rank's coordinates are (stage, dp replica, mp shard).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from llama_model.config import LlamaConfig
from llama_model.errors import LlamaModelError

MESH_DIMS = ("pp", "dp", "mp")
SCHEDULES = ("FThenB", "1F1B", "VPP")
_TOKEN = re.compile(r"(dp|mp|pp)(\d+)")
# Axis tokens back to back or with one separator between them; nothing else ("mp-2" is not mp2).
_STRATEGY = re.compile(r"(?:dp|mp|pp)\d+(?:[-_x]?(?:dp|mp|pp)\d+)*")


@dataclass(frozen=True)
class Strategy:
    dp: int = 1
    mp: int = 1
    pp: int = 1
    micro_batches: int = 1  # gradient accumulation: micro-batches per optimizer step
    schedule: str = "1F1B"  # pipeline schedule when pp > 1
    # VPP (interleaved): each rank runs this many non-adjacent chunks of layers (rank r: chunks r,
    # r + pp, ...), which shrinks the pipeline bubble by that factor
    virtual_pp_degree: int = 1
    # Decoder layers per stage; None splits them as evenly as possible (earlier stages take the extra).
    stage_layers: tuple[int, ...] | None = None
    # GPU only in Paddle 3.3.1 (both need reduce-scatter, which the CPU build lacks):
    sequence_parallel: bool = (
        False  # activations outside attention/MLP split over the sequence on mp
    )
    sharding_stage: int = (
        0  # ZeRO-style sharding of optimizer state (1), + gradients (2), + params (3) over dp
    )

    def __post_init__(self) -> None:
        for name in ("dp", "mp", "pp", "micro_batches", "virtual_pp_degree"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise LlamaModelError(f"{name} must be a positive integer, got {value!r}")
        if self.schedule not in SCHEDULES:
            raise LlamaModelError(
                f"unknown pipeline schedule {self.schedule!r} (known: {', '.join(SCHEDULES)})"
            )
        if self.sharding_stage not in (0, 1, 2, 3):
            raise LlamaModelError(
                f"sharding_stage must be 0, 1, 2 or 3, got {self.sharding_stage!r}"
            )
        if self.sharding_stage and self.dp == 1:
            raise LlamaModelError("sharding_stage shards over dp and needs dp > 1")
        if self.sequence_parallel and self.mp == 1:
            raise LlamaModelError("sequence_parallel splits over mp and needs mp > 1")
        if self.schedule == "VPP":
            if self.pp == 1:
                raise LlamaModelError(
                    "the VPP schedule interleaves pipeline stages and needs pp > 1"
                )
            if self.virtual_pp_degree < 2:
                raise LlamaModelError(
                    "the VPP schedule needs virtual_pp_degree ≥ 2 (chunks per rank)"
                )
            if self.micro_batches % self.pp:
                raise LlamaModelError(
                    f"the VPP schedule needs micro-batches ({self.micro_batches}) to be a multiple of pp{self.pp}"
                )
            if self.stage_layers is not None:
                raise LlamaModelError(
                    "stage_layers applies to FThenB/1F1B; VPP splits the layers evenly over pp × virtual_pp_degree chunks"
                )
        elif self.virtual_pp_degree != 1:
            raise LlamaModelError(
                f"virtual_pp_degree {self.virtual_pp_degree} needs the VPP schedule (schedule is {self.schedule})"
            )
        if self.stage_layers is not None:
            object.__setattr__(self, "stage_layers", tuple(int(n) for n in self.stage_layers))
            if len(self.stage_layers) != self.pp:
                raise LlamaModelError(
                    f"stage_layers has {len(self.stage_layers)} entries but pp is {self.pp}"
                )
            if any(n < 1 for n in self.stage_layers):
                raise LlamaModelError(
                    f"every stage needs at least one layer, got {list(self.stage_layers)}"
                )

    # ------------------------------------------------------------------------------------ parse
    @classmethod
    def parse(cls, text: str, **options) -> Strategy:
        """``"dp2mp2pp2"``, ``"pp2-dp4"``, ``"DP2xMP2"``, ``"mp8"``, ``"dp1"`` (one process): axes in
        any order, case-insensitive, back to back or with one ``-``, ``_`` or ``x`` between them;
        anything else is refused (``"mp-2"``, ``"dp2mp3xx"``). Options: the other
        fields (micro_batches, schedule, stage_layers, sequence_parallel, sharding_stage)."""
        spec = text.strip().lower()
        if not spec:
            raise LlamaModelError("empty strategy string (expected e.g. 'dp2mp2pp2')")
        if not _STRATEGY.fullmatch(spec):
            raise LlamaModelError(
                f"cannot parse strategy {text!r}: expected axes dp/mp/pp each followed by a degree, "
                "optionally separated by '-', '_' or 'x', e.g. 'dp2mp2pp2'"
            )
        degrees: dict[str, int] = {}
        for match in _TOKEN.finditer(spec):
            axis, degree = match.group(1), int(match.group(2))
            if axis in degrees:
                raise LlamaModelError(f"strategy {text!r} names {axis} twice")
            if degree < 1:
                raise LlamaModelError(f"strategy {text!r}: degree of {axis} must be ≥ 1")
            degrees[axis] = degree
        return cls(**degrees, **options)

    def __str__(self) -> str:
        return f"dp{self.dp}mp{self.mp}pp{self.pp}"

    def to_dict(self) -> dict:
        """Every field, as JSON takes them (a launcher writes it once; ranks read it back)."""
        out = dataclasses.asdict(self)
        if self.stage_layers is not None:
            out["stage_layers"] = list(self.stage_layers)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Strategy:
        """The inverse of ``to_dict`` (validated again)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise LlamaModelError(f"unknown strategy fields: {', '.join(unknown)}")
        return cls(**data)

    @property
    def world_size(self) -> int:
        return self.dp * self.mp * self.pp

    @property
    def mesh_shape(self) -> list[int]:
        return [self.pp, self.dp, self.mp]

    def build_mesh(self):
        """The job's ProcessMesh: ranks 0..world_size-1 row-major over ``MESH_DIMS`` [pp, dp, mp].
        The one place the mesh is made (Paddle loads here; the strategy itself is plain Python)."""
        import numpy as np

        from llama_model._paddle import paddle

        ranks = np.arange(self.world_size).reshape(self.mesh_shape).tolist()
        return paddle.distributed.ProcessMesh(ranks, dim_names=list(MESH_DIMS))

    def coordinates(self, rank: int) -> tuple[int, int, int]:
        """(pp stage, dp replica, mp shard) of a rank in the row-major [pp, dp, mp] mesh."""
        stage, rest = divmod(rank, self.dp * self.mp)
        dp_rank, mp_rank = divmod(rest, self.mp)
        return stage, dp_rank, mp_rank

    # ------------------------------------------------------------------------------- validation
    def validate(
        self, config: LlamaConfig, world_size: int | None = None, global_batch: int | None = None
    ) -> None:
        """Raise a one-line LlamaModelError when this layout cannot run ``config``."""
        if world_size is not None and world_size != self.world_size:
            raise LlamaModelError(
                f"strategy {self} needs {self.world_size} processes but the world size is {world_size}"
            )
        checks = (
            ("num_attention_heads", config.num_attention_heads),
            ("num_key_value_heads", config.num_key_value_heads),
            ("intermediate_size", config.intermediate_size),
            ("vocab_size", config.vocab_size),
        )
        for name, value in checks:
            if value % self.mp:
                raise LlamaModelError(f"mp{self.mp} does not divide {name} ({value})")
        if self.pp > config.num_hidden_layers:
            raise LlamaModelError(
                f"pp{self.pp} exceeds num_hidden_layers ({config.num_hidden_layers})"
            )
        chunks = self.pp * self.virtual_pp_degree
        if self.schedule == "VPP" and config.num_hidden_layers % chunks:
            raise LlamaModelError(
                f"VPP: pp{self.pp} × virtual_pp_degree {self.virtual_pp_degree} = {chunks} chunks "
                f"do not split num_hidden_layers ({config.num_hidden_layers}) evenly"
            )
        if self.stage_layers is not None and sum(self.stage_layers) != config.num_hidden_layers:
            raise LlamaModelError(
                f"stage_layers {list(self.stage_layers)} sum to {sum(self.stage_layers)}, "
                f"not num_hidden_layers ({config.num_hidden_layers})"
            )
        if self.pp > 1 and config.tie_word_embeddings:
            raise LlamaModelError(
                "tie_word_embeddings with pp > 1 is not supported: the embedding and the head live on different stages"
            )
        if global_batch is not None:
            self.validate_batch(global_batch)

    def validate_batch(self, global_batch: int) -> None:
        if global_batch % (self.dp * self.micro_batches):
            raise LlamaModelError(
                f"global batch {global_batch} is not divisible by dp{self.dp} × {self.micro_batches} micro-batches"
            )

    @property
    def chunks(self) -> int:
        """Pipeline chunks in all: pp, or pp × virtual_pp_degree under VPP."""
        return self.pp * self.virtual_pp_degree

    def stage_chunks(self, stage: int) -> list[int]:
        """The chunks stage ``stage`` runs, in pipeline order: stage, stage + pp, ..."""
        return list(range(stage, self.chunks, self.pp))

    def chunk_layers(self, num_layers: int) -> list[range]:
        """The global decoder-layer indices of each chunk (VPP: an even split over all chunks)."""
        if self.virtual_pp_degree == 1:
            return self.layer_split(num_layers)
        per_chunk = num_layers // self.chunks
        return [range(c * per_chunk, (c + 1) * per_chunk) for c in range(self.chunks)]

    def layer_split(self, num_layers: int) -> list:
        """The global decoder-layer indices of each pipeline stage (under VPP, every layer of the
        stage's chunks: not contiguous)."""
        if self.virtual_pp_degree > 1:
            chunks = self.chunk_layers(num_layers)
            return [[i for c in self.stage_chunks(s) for i in chunks[c]] for s in range(self.pp)]
        if self.stage_layers is not None:
            counts = list(self.stage_layers)
        else:
            base, extra = divmod(num_layers, self.pp)
            counts = [base + (1 if s < extra else 0) for s in range(self.pp)]
        starts = [sum(counts[:s]) for s in range(self.pp)]
        return [range(start, start + n) for start, n in zip(starts, counts)]

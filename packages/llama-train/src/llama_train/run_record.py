"""The resolved run: a job's options and what the front process derived from them, frozen.

The front process checks the options against the model and the run directory and records what
they resolve to: the parallel ``Strategy`` (built once from --strategy and the pipeline, sharding
and batch options), the sequence length, the checkpoint a resume loads and the weights
--init-from starts from. ``OUTPUT/run_config.json`` is this record; every rank reads it and derives
nothing again. Its options part, by section, is a config file: ``--config OUTPUT/run_config.json``
runs the same job again (the ``resolved`` part is recomputed by that run).

Format 2 (this one)::

    {"format": 2, "job": {...}, "model": {...}, ..., "launch": {...},
     "resolved": {"parallel": Strategy.to_dict(), "seq_len": N, "init_source": {...} | null,
                  "resume": "/abs/checkpoints/step-N" | null}}

Format 1 held the options flat, with the resolved values among them (``parallel``,
``init_source``, ``seq_len`` filled in, ``resume`` the checkpoint's path); it is read too, so that
an old run directory's file still starts its job.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llama_train import options, toml_writer
from llama_train.errors import TrainError
from llama_train.options import CONFIG_FORMAT, RunConfig

if TYPE_CHECKING:
    from llama_model import Strategy
    from llama_train.cluster import Topology

DEFAULT_MAX_SEQ_LEN = 2048  # the sequence length of a model that allows more, unless asked


@dataclass(frozen=True)
class RunRecord:
    options: RunConfig
    strategy: Strategy  # the run's one layout; the ranks build it from here, never from strings
    seq_len: int
    # What --init-from resolved to ({"path", "format", "layout", "digest"}); None when the run
    # starts from scratch or resumes (a checkpoint's weights win).
    init_source: dict | None = None
    resume: str | None = None  # the absolute path of the checkpoint loaded; None: a fresh start
    # The nodes and processes (cluster.Topology): from the launch options or the scheduler's
    # variables, as the front process of node 0 saw them.
    topology: Topology | None = None
    # When this invocation must have stopped (--max-duration from its start; wall clock, seconds
    # since the epoch), the same on every node; None without a limit.
    deadline: float | None = None

    # ---------------------------------------------------------------------------- derived
    @property
    def output(self) -> str:
        return self.options.job.output

    @property
    def world_size(self) -> int:
        return self.strategy.world_size

    @property
    def micro_batches(self) -> int:
        return self.strategy.micro_batches

    @property
    def batch_size(self) -> int:
        """Samples per optimizer step (the global batch)."""
        return self.options.training.micro_batch_size * self.strategy.dp * self.micro_batches

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def warmup(self) -> int:
        return options.warmup_steps(self.options)

    @property
    def decay_end(self) -> int:
        return options.decay_end(self.options)

    @property
    def nodes(self) -> Topology:
        from llama_train.cluster import resolve_topology

        if self.topology is not None:
            return self.topology
        return resolve_topology(self.options.launch, self.world_size, environ={})

    @property
    def procs_per_node(self) -> int:
        return self.nodes.nproc_per_node

    @property
    def launched(self) -> bool:
        """Whether the job runs through paddle.distributed.launch (else in this very process):
        more than one process or node, or a job to restart or watch for hangs (the front process
        must outlive its ranks)."""
        resilience = self.options.resilience
        explicit_timeout = options.hang_timeout_s(resilience.hang_timeout) not in (None, 0)
        watched = resilience.max_restarts > 0 or explicit_timeout
        return self.world_size > 1 or self.nodes.nnodes > 1 or watched

    # --------------------------------------------------------------------------- the file
    def to_dict(self) -> dict[str, Any]:
        resolved = {"parallel": self.strategy.to_dict(), "seq_len": self.seq_len,
                    "init_source": self.init_source, "resume": self.resume,
                    "topology": self.topology.to_dict() if self.topology else None,
                    "deadline": self.deadline}  # fmt: skip
        return {"format": CONFIG_FORMAT, **self.options.sections(), "resolved": resolved}

    def write(self, path: str) -> None:
        from llama_ckpt.atomic import write_atomic

        write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def to_toml(self) -> str:
        """The record as a sectioned TOML file (what ``--print-config`` prints): given back to
        --config, its options run the same job."""
        header = (
            "llama-train: the options of this run by section, defaults included; [resolved] is\n"
            "what they resolve to, recomputed by a run that reads this file."
        )
        return toml_writer.dumps(self.to_dict(), header)

    @classmethod
    def read(cls, path: str) -> RunRecord:
        """A run_config.json of format 2, or of format 1 (the flat form)."""
        from llama_model import LlamaModelError, Strategy

        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            raise TrainError(f"cannot read {path}: {exc}") from None
        fmt = data.get("format")
        if fmt == 1:  # the resolved values sat among the options, "resume" was overwritten
            resume = data.get("resume")  # with the checkpoint's path; "auto" stayed if none
            resolved = {"parallel": data.get("parallel"), "seq_len": data.get("seq_len"),
                        "init_source": data.get("init_source"),
                        "resume": None if resume == "auto" else resume}  # fmt: skip
        elif fmt == CONFIG_FORMAT:
            resolved = data.get("resolved") or {}
        else:
            raise TrainError(f"{path}: unknown run record format {fmt!r}")
        from llama_train.cluster import Topology

        try:
            strategy = Strategy.from_dict(resolved["parallel"])
            seq_len = int(resolved["seq_len"])
            topology = resolved.get("topology")
            topology = Topology.from_dict(topology) if topology else None
        except (KeyError, TypeError, ValueError, LlamaModelError) as exc:
            raise TrainError(f"{path}: no valid resolved strategy and seq_len ({exc})") from None
        return cls(RunConfig.read(path), strategy, seq_len, resolved.get("init_source"),
                   resolved.get("resume"), topology, resolved.get("deadline"))  # fmt: skip


def resolve(cfg: RunConfig, config, environ=None, started: float | None = None) -> RunRecord:
    """The record of a fresh start of ``cfg`` on the model ``config``: the Strategy, built one
    option at a time so that a refusal names the option that caused it (the degrees, the pipeline
    schedule or --virtual-pp-degree without VPP, then --sequence-parallel, then --sharding-stage),
    the sequence length, the nodes (``cluster.resolve_topology``, from ``environ``: by default
    this process's environment) and the deadline of --max-duration counted from ``started``
    (default: now). The resume target and init weights are the run directory's
    (``preparation.prepare``). Raises TrainError with one line."""
    started = time.time() if started is None else started
    from llama_model import LlamaModelError, Strategy

    par = cfg.parallel
    degrees = Strategy.parse(par.strategy)  # already checked by options.check
    micro_batches = cfg.training.micro_batches(degrees.dp)
    vpp_alone = par.pp_schedule != "VPP" and par.virtual_pp_degree != 1
    steps = (
        ("--strategy", {"dp": degrees.dp, "mp": degrees.mp, "pp": degrees.pp,
                        "micro_batches": micro_batches}),
        (
            "--virtual-pp-degree" if vpp_alone else "--pp-schedule",
            {"schedule": par.pp_schedule, "virtual_pp_degree": par.virtual_pp_degree},
        ),
        ("--sequence-parallel", {"sequence_parallel": par.sequence_parallel}),
        ("--sharding-stage", {"sharding_stage": par.sharding_stage}),
    )  # fmt: skip
    fields: dict = {}
    for option, added in steps:
        fields.update(added)
        try:
            strategy = Strategy(**fields)
        except LlamaModelError as exc:
            raise TrainError(f"{option}: {exc}") from None
    seq_len = cfg.training.seq_len
    if seq_len is None:
        seq_len = min(config.max_position_embeddings, DEFAULT_MAX_SEQ_LEN)
    if seq_len > config.max_position_embeddings:
        raise TrainError(
            f"--seq-len {seq_len} exceeds the model's max_position_embeddings "
            f"({config.max_position_embeddings})"
        )
    from llama_train.cluster import resolve_topology

    topology = resolve_topology(cfg.launch, strategy.world_size, environ)
    deadline = None
    if cfg.resilience.max_duration is not None:
        deadline = started + options.parse_duration(cfg.resilience.max_duration, "--max-duration")
    return RunRecord(cfg, strategy, seq_len, topology=topology, deadline=deadline)

"""The run configuration: every option of a training job, its default, and where values come from.

Precedence: built-in defaults < ``--config run.toml|run.json`` < command-line flags. The resolved
configuration is written to ``OUTPUT/run_config.json`` and is what every rank reads, so a job is
described by one file. Defaults follow the upstream PaddleNLP LLaMA pretraining recipe where they
make sense (lr 3e-5 → 3e-6, 1% warmup, weight decay 0.01, clip 1.0, split 949,50,1, seed 1234).

Option names are the dataclass field names with ``-`` for ``_`` (``--micro-batch-size``), and the
same names with ``_`` or ``-`` in a config file.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any

import tomllib

from llama_train.errors import TrainError

AMP_CHOICES = ("off", "bf16", "fp16")
DECAY_CHOICES = ("linear", "cosine", "constant")
SCHEDULE_CHOICES = ("1F1B", "FThenB", "VPP")
RECOMPUTE_CHOICES = ("full", "attention")
INIT_LAYOUTS = ("hf", "paddle")
CONFIG_FORMAT = 1


def _meta(help: str, **extra) -> dict[str, Any]:
    """An option's help text and its checks (required, multiple, choices, min, flag, kind)."""
    return {"help": help, **extra}


@dataclass
class RunConfig:
    # --------------------------------------------------------------------------- what to train
    model_config: str | None = field(
        default=None,
        metadata=_meta(
            "A preset name (tiny, bench-t, llama2-7b, ...) or a config.json / model directory "
            "(default with --init-from: its config.json)."
        ),
    )
    init_from: str | None = field(
        default=None,
        metadata=_meta(
            "Start from these weights (fresh optimizer and schedule): a Hugging Face or PaddleNLP "
            "model directory, a .safetensors or .pdparams file, or a llama-train checkpoint or run "
            "directory. Each rank reads only its shards. Ignored when --resume finds a checkpoint."
        ),
    )
    init_layout: str | None = field(
        default=None,
        metadata=_meta(
            "Layout of --init-from (default: told by the tensor names): hf (transformers names, "
            "Linear weights [out, in]) or paddle (PaddleNLP names, [in, out]).",
            choices=INIT_LAYOUTS,
        ),
    )
    data: list[str] = field(
        default=None,
        metadata=_meta(
            "Data prefix (PREFIX.bin/.idx); repeat for a blend, or one 'W1 P1 W2 P2' string.",
            required=True,
            multiple=True,
        ),
    )
    data_weights: list[float] | None = field(
        default=None,
        metadata=_meta("Blend weights, one per --data (comma-separated).", kind="floats"),
    )
    tokenizer: str | None = field(
        default=None,
        metadata=_meta(
            "The tokenizer the data was made with (SentencePiece .model, tokenizer.json, directory or 'byte'): sets a preset's vocabulary and is copied into every checkpoint."
        ),
    )
    output: str = field(
        default=None,
        metadata=_meta(
            "Run directory: run_config.json, metrics.jsonl, logs/, checkpoints/.", required=True
        ),
    )
    strategy: str = field(
        default="dp1",
        metadata=_meta(
            "Parallel layout, e.g. dp2mp2pp2, mp2, dp4mp2 (degrees multiply to the processes)."
        ),
    )
    split: str = field(
        default="949,50,1", metadata=_meta("Train/valid/test split of the documents.")
    )
    data_cache_dir: str | None = field(
        default=None,
        metadata=_meta("Where sample indices are cached (default: index-cache/ beside the data)."),
    )
    max_epochs: int = field(
        default=1,
        metadata=_meta(
            "Passes over the train split the run may make; more steps than that is refused.", min=1
        ),
    )
    make_vocab_size_divisible_by: int = field(
        default=128,
        metadata=_meta(
            "A preset's vocabulary is the tokenizer's, rounded up to a multiple of this.", min=1
        ),
    )
    # ---------------------------------------------------------------------------- batch, steps
    seq_len: int | None = field(
        default=None,
        metadata=_meta(
            "Tokens per sample (default: the model's max_position_embeddings, at most 2048).", min=1
        ),
    )
    micro_batch_size: int = field(
        default=1, metadata=_meta("Samples per micro-batch per data-parallel rank.", min=1)
    )
    grad_accum: int | None = field(
        default=None,
        metadata=_meta(
            "Micro-batches per step (gradient accumulation; pipeline micro-batches). Default 1, or from --global-batch-size.",
            min=1,
        ),
    )
    global_batch_size: int | None = field(
        default=None,
        metadata=_meta(
            "Samples per step; sets --grad-accum = global / (micro-batch-size × dp).", min=1
        ),
    )
    max_steps: int = field(
        default=2000,
        metadata=_meta(
            "Optimizer steps of the whole run (a resumed run continues up to it).", min=1
        ),
    )
    # ------------------------------------------------------------------------------ optimizer
    lr: float = field(default=3e-5, metadata=_meta("Peak learning rate.", min=0.0))
    min_lr: float = field(
        default=3e-6, metadata=_meta("Learning rate at the end of the decay.", min=0.0)
    )
    warmup_steps: int | None = field(
        default=None, metadata=_meta("Linear warmup steps (default: 1% of --max-steps).", min=0)
    )
    decay_steps: int | None = field(
        default=None,
        metadata=_meta("Step at which the decay reaches --min-lr (default: --max-steps).", min=1),
    )
    decay_style: str = field(
        default="linear", metadata=_meta("Decay after warmup.", choices=DECAY_CHOICES)
    )
    adam_beta1: float = field(default=0.9, metadata=_meta("AdamW beta1."))
    adam_beta2: float = field(default=0.999, metadata=_meta("AdamW beta2."))
    adam_eps: float = field(default=1e-8, metadata=_meta("AdamW epsilon."))
    weight_decay: float = field(
        default=0.01,
        metadata=_meta("AdamW decoupled weight decay (not applied to norm weights).", min=0.0),
    )
    clip_grad: float = field(
        default=1.0,
        metadata=_meta(
            "Clip gradients to this global L2 norm over all shards and stages (0: off).", min=0.0
        ),
    )
    seed: int = field(
        default=1234, metadata=_meta("Seed of the weights, the data order and every random draw.")
    )
    # ------------------------------------------------------------------------ parallel, compute
    pp_schedule: str = field(
        default="1F1B", metadata=_meta("Pipeline schedule when pp > 1.", choices=SCHEDULE_CHOICES)
    )
    virtual_pp_degree: int = field(
        default=1,
        metadata=_meta(
            "Chunks of layers per pipeline rank under --pp-schedule VPP (interleaved: rank r runs "
            "chunks r, r+pp, ...); needs the layers to split evenly into pp × this many chunks.",
            min=1,
        ),
    )
    sequence_parallel: bool = field(
        default=False,
        metadata=_meta(
            "Split the activations along the sequence over mp between the tensor-parallel blocks "
            "(needs mp > 1; GPU only: it reduce-scatters).",
            flag=True,
        ),
    )
    sharding_stage: int = field(
        default=0,
        metadata=_meta(
            "ZeRO sharding over dp: 1 optimizer state, 2 also gradients, 3 also parameters; 0 off "
            "(needs dp > 1; GPU only: it reduce-scatters).",
            min=0,
        ),
    )
    recompute: bool = field(
        default=False,
        metadata=_meta("Recompute activations in the backward pass (saves memory).", flag=True),
    )
    recompute_granularity: str = field(
        default="full",
        metadata=_meta(
            "What --recompute recomputes: each decoder layer or the attention block.",
            choices=RECOMPUTE_CHOICES,
        ),
    )
    amp: str = field(
        default="off",
        metadata=_meta(
            "Mixed precision compute (GPU only; parameters and optimizer stay float32).",
            choices=AMP_CHOICES,
        ),
    )
    to_static: bool = field(
        default=False,
        metadata=_meta(
            "Compile the step with dist.to_static (where the backend supports it).", flag=True
        ),
    )
    # ---------------------------------------------------------------------------- eval, logging
    eval_every: int = field(
        default=1000, metadata=_meta("Evaluate on the valid split every N steps (0: never).", min=0)
    )
    eval_iters: int = field(
        default=10,
        metadata=_meta(
            "Global batches per evaluation (the first ones of the valid split, the same each time).",
            min=1,
        ),
    )
    log_every: int = field(
        default=1, metadata=_meta("Log a line and a metrics record every N steps.", min=1)
    )
    report_to: str = field(
        default="jsonl",
        metadata=_meta(
            "Where records go, comma-separated: jsonl (OUTPUT/metrics.jsonl, always), tensorboard, "
            "wandb, visualdl (each an extra: pip install 'llama-train[tensorboard]', ...)."
        ),
    )
    profile_steps: str | None = field(
        default=None,
        metadata=_meta(
            "Profile steps A-B (e.g. 5-7): a Paddle profiler trace per rank under "
            "OUTPUT/profile/step-A-B/rank-N/ and the operator table once; nothing outside them."
        ),
    )
    peak_tflops: float | None = field(
        default=None,
        metadata=_meta(
            "Peak TFLOP/s of one device, for MFU (default: known GPUs in the compute dtype; none on CPU).",
            min=0.0,
        ),
    )
    # ------------------------------------------------------------------------------ checkpoints
    save_every: int = field(
        default=1000,
        metadata=_meta(
            "Save a checkpoint every N steps (0: only at the end and on SIGTERM).", min=0
        ),
    )
    keep_last: int = field(
        default=2,
        metadata=_meta(
            "Checkpoints kept (older ones are deleted after a newer one is complete; 0: keep all).",
            min=0,
        ),
    )
    resume: str | None = field(
        default=None,
        metadata=_meta(
            "'auto' (the latest checkpoint of OUTPUT, if any) or a checkpoint directory."
        ),
    )
    # -------------------------------------------------------------------------------- launching
    nproc_per_node: int | None = field(
        default=None,
        metadata=_meta("Processes on this node (default: the strategy's size / --nnodes).", min=1),
    )
    nnodes: int = field(
        default=1,
        metadata=_meta("Nodes of a multi-node job (passed to paddle.distributed.launch).", min=1),
    )
    master: str | None = field(
        default=None, metadata=_meta("IP:PORT of the rendezvous for a multi-node job.")
    )
    node_rank: int | None = field(
        default=None, metadata=_meta("This node's rank in a multi-node job.", min=0)
    )
    # ------------------------------------------------------------ resolved, not options
    parallel: dict | None = field(
        default=None,
        metadata=_meta(
            "The run's llama_model.Strategy (Strategy.to_dict), built once by the front process "
            "from --strategy and the pipeline, sharding and batch options; what every rank uses.",
            internal=True,
        ),
    )
    init_source: dict | None = field(
        default=None,
        metadata=_meta(
            "What --init-from resolved to (path, format, layout, digest), written by the front "
            "process; None when the run does not start from weights.",
            internal=True,
        ),
    )

    # ------------------------------------------------------------------------------- derived
    @property
    def dp_mp_pp(self) -> tuple[int, int, int]:
        return _degrees(self.strategy)

    @property
    def world_size(self) -> int:
        dp, mp, pp = self.dp_mp_pp
        return dp * mp * pp

    @property
    def accumulation(self) -> int:
        return self.grad_accum or 1

    @property
    def batch_size(self) -> int:
        """Samples per optimizer step (the global batch)."""
        return self.micro_batch_size * self.dp_mp_pp[0] * self.accumulation

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def warmup(self) -> int:
        return (
            self.warmup_steps if self.warmup_steps is not None else math.ceil(0.01 * self.max_steps)
        )

    @property
    def decay_end(self) -> int:
        return self.decay_steps if self.decay_steps is not None else self.max_steps

    @property
    def procs_per_node(self) -> int:
        return self.nproc_per_node or max(1, self.world_size // self.nnodes)

    @property
    def launched(self) -> bool:
        """Whether the job runs through paddle.distributed.launch (else in this very process)."""
        return self.world_size > 1 or self.nnodes > 1

    def to_dict(self) -> dict[str, Any]:
        return {"format": CONFIG_FORMAT, **dataclasses.asdict(self)}

    def write(self, path: str) -> None:
        from llama_ckpt.atomic import write_atomic

        write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, path: str) -> RunConfig:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        data.pop("format", None)
        return cls(**data)


@functools.lru_cache(maxsize=8)
def _degrees(spec: str) -> tuple[int, int, int]:
    """(dp, mp, pp) of a strategy string, parsed once per string (the step loop reads them)."""
    from llama_model import Strategy  # late: only the derived values need it

    s = Strategy.parse(spec)
    return s.dp, s.mp, s.pp


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
OPTIONS = {name: f for name, f in FIELDS.items() if not f.metadata.get("internal")}


def read_config_file(path: str) -> dict[str, Any]:
    """The options of a ``.toml`` or ``.json`` file, keys normalised to field names."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise TrainError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        if path.endswith(".toml"):
            data = tomllib.loads(raw.decode("utf-8"))
        elif path.endswith(".json"):
            data = json.loads(raw)
        else:
            raise TrainError(f"config file {path} must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrainError(f"config file {path} is not valid: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise TrainError(f"config file {path} must hold a table of options")
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name == "format":
            continue
        if name not in OPTIONS:
            raise TrainError(f"config file {path}: unknown option {key!r}")
        out[name] = value
    return out


def _coerce(name: str, value: Any) -> Any:
    """Values from a file or flags into the field's type (lists for data, floats for weights)."""
    meta = FIELDS[name].metadata
    if value is None:
        return None
    if meta.get("multiple"):
        return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    if meta.get("kind") == "floats":
        items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
        try:
            return [float(v) for v in items]
        except ValueError:
            raise TrainError(f"--{name.replace('_', '-')} must be numbers, got {value!r}") from None
    default = FIELDS[name].default
    kind = type(default) if default is not None else None
    annotation = str(FIELDS[name].type)
    try:
        if kind is bool or meta.get("flag"):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if kind is int or "int" in annotation:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float or "float" in annotation:
            return float(value)
    except (TypeError, ValueError):
        raise TrainError(f"--{name.replace('_', '-')}: {value!r} is not a valid value") from None
    return str(value)


def resolve(file_values: dict[str, Any], flag_values: dict[str, Any]) -> RunConfig:
    """Defaults < file < flags (a flag left unset is None and does not override)."""
    merged: dict[str, Any] = {}
    for source in (file_values, flag_values):
        for name, value in source.items():
            if value is None or (FIELDS[name].metadata.get("multiple") and value == ()):
                continue
            merged[name] = _coerce(name, value)
    for name, f in FIELDS.items():
        if f.metadata.get("required") and merged.get(name) in (None, []):
            raise TrainError(
                f"missing option --{name.replace('_', '-')} (on the command line or in --config)"
            )
    if merged.get("model_config") is None and merged.get("init_from") is None:
        raise TrainError(
            "missing option --model-config (a preset or config.json), or --init-from (weights with "
            "their config.json)"
        )
    cfg = RunConfig(**merged)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Checks that need no data and no model: value ranges and the options' consistency."""
    from llama_model import LlamaModelError

    for name, f in FIELDS.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        # Every float (and float list) is finite: NaN passes any comparison below and ∞ most.
        for number in value if isinstance(value, list) else [value]:
            if isinstance(number, float) and not math.isfinite(number):
                what = "finite numbers" if isinstance(value, list) else "a finite number"
                raise TrainError(f"--{name.replace('_', '-')} must be {what}, got {number}")
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise TrainError(
                f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, got {value!r}"
            )
        low = f.metadata.get("min")
        if low is not None and value < low:
            raise TrainError(f"--{name.replace('_', '-')} must be ≥ {low}, got {value}")
    try:
        dp, mp, pp = cfg.dp_mp_pp  # the one parse of the string (cached)
    except LlamaModelError as exc:
        raise TrainError(f"--strategy: {exc}") from None
    if cfg.data_weights is not None and len(cfg.data_weights) != len(cfg.data):
        raise TrainError(
            f"{len(cfg.data_weights)} --data-weights for {len(cfg.data)} --data prefixes"
        )
    if cfg.global_batch_size is not None:
        per_pass = cfg.micro_batch_size * dp
        if cfg.global_batch_size % per_pass:
            raise TrainError(
                f"--global-batch-size {cfg.global_batch_size} is not a multiple of micro-batch-size "
                f"{cfg.micro_batch_size} × dp{dp} = {per_pass}"
            )
        accum = cfg.global_batch_size // per_pass
        if cfg.grad_accum is not None and cfg.grad_accum != accum:
            raise TrainError(
                f"--grad-accum {cfg.grad_accum} contradicts --global-batch-size {cfg.global_batch_size} "
                f"(which needs {accum})"
            )
        cfg.grad_accum = accum
    from llama_train.reporting import parse_report_to

    parse_report_to(cfg.report_to)
    if cfg.profile_steps is not None:
        _, last = parse_profile_steps(cfg.profile_steps)
        if last > cfg.max_steps:
            raise TrainError(
                f"--profile-steps {cfg.profile_steps} ends after --max-steps {cfg.max_steps}"
            )
    if cfg.min_lr > cfg.lr:
        raise TrainError(f"--min-lr {cfg.min_lr} exceeds --lr {cfg.lr}")
    if not 0 <= cfg.adam_beta1 < 1 or not 0 <= cfg.adam_beta2 < 1:
        raise TrainError("--adam-beta1 and --adam-beta2 must lie in [0, 1)")
    if not cfg.adam_eps > 0:
        raise TrainError("--adam-eps must be > 0")
    if cfg.warmup > cfg.decay_end:
        raise TrainError(f"--warmup-steps {cfg.warmup} exceeds the decay's end ({cfg.decay_end})")
    world = dp * mp * pp
    if cfg.nnodes > 1 and cfg.master is None:
        raise TrainError(
            f"--nnodes {cfg.nnodes} needs --master IP:PORT (the rendezvous of the nodes)"
        )
    if cfg.procs_per_node * cfg.nnodes != world:
        raise TrainError(
            f"strategy {cfg.strategy} needs {world} processes but --nproc-per-node {cfg.procs_per_node} × "
            f"--nnodes {cfg.nnodes} = {cfg.procs_per_node * cfg.nnodes}"
        )


def parse_profile_steps(spec: str) -> tuple[int, int]:
    """``"A-B"`` (or ``"A"``) -> (A, B), 1 ≤ A ≤ B."""
    parts = spec.split("-")
    try:
        first, last = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, -1)
    except ValueError:
        first, last = 0, -1
    if not 1 <= first <= last:
        raise TrainError(f"--profile-steps must be A-B with 1 ≤ A ≤ B (steps), got {spec!r}")
    return first, last

"""The options of a training job, one frozen dataclass per section, and where their values come from.

Precedence: built-in defaults < ``--config run.toml|run.json`` < command-line flags. A config file
holds one table per section (``[parallel] strategy = "dp2mp2pp2"``); the flags keep one flat name
each (``--strategy``), which is also the option's key in its section. Defaults follow the upstream
PaddleNLP LLaMA pretraining recipe where they make sense (lr 3e-5 → 3e-6, 1% warmup, weight decay
0.01, clip 1.0, split 949,50,1, seed 1234).

Each option is declared once, as a field of its section: its type is the annotation (the one
source of the click types and of the coercion of file values, ``Kind``), its default the field's,
its help text and bounds a ``Rule`` in the field's metadata. ``resolve`` merges the sources into a
frozen ``RunConfig`` and checks it; what the front process derives from it (the parallel
``Strategy``, the sequence length, the resume target, the init weights) is ``RunRecord``'s, never
written back into the options.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from llama_train.errors import TrainError

AMP_CHOICES = ("off", "bf16", "fp16")
DECAY_CHOICES = ("linear", "cosine", "constant")
SCHEDULE_CHOICES = ("1F1B", "FThenB", "VPP")
RECOMPUTE_CHOICES = ("full", "attention")
INIT_LAYOUTS = ("hf", "paddle")
# The version of the sectioned form (``format`` in run_config.json and in --print-config's output).
# Version 1 is the flat form (every option at the top level), still read so that the run
# directories and config files written in it keep working.
CONFIG_FORMAT = 2


@dataclass(frozen=True)
class Rule:
    """What is said and checked about an option besides its type."""

    help: str
    required: bool = False
    choices: tuple[str, ...] = ()
    min: float | None = None  # the value is ≥ min
    above: float | None = None  # the value is > above
    number_as_text: bool = False  # a text option that a file may give as a number (seconds)


def option(default: Any, help: str, **rules: Any) -> Any:
    return field(default=default, metadata={"rule": Rule(help, **rules)})


# ------------------------------------------------------------------------------------ sections
@dataclass(frozen=True)
class Job:
    """Run directory."""

    output: str | None = option(
        None, "Run directory: run_config.json, metrics.jsonl, logs/, checkpoints/.", required=True
    )


@dataclass(frozen=True)
class Model:
    """Model and initial weights."""

    model_config: str | None = option(
        None,
        "A preset name (tiny, bench-t, llama2-7b, ...) or a config.json / model directory "
        "(default with --init-from: its config.json).",
    )
    init_from: str | None = option(
        None,
        "Start from these weights (fresh optimizer and schedule): a Hugging Face or PaddleNLP "
        "model directory, a .safetensors or .pdparams file, or a llama-train checkpoint or run "
        "directory. Each rank reads only its shards. Ignored when --resume finds a checkpoint.",
    )
    init_layout: str | None = option(
        None,
        "Layout of --init-from (default: told by the tensor names): hf (transformers names, "
        "Linear weights [out, in]) or paddle (PaddleNLP names, [in, out]).",
        choices=INIT_LAYOUTS,
    )
    tokenizer: str | None = option(
        None,
        "The tokenizer the data was made with (SentencePiece .model, tokenizer.json, directory "
        "or 'byte'): sets a preset's vocabulary and is copied into every checkpoint.",
    )
    make_vocab_size_divisible_by: int = option(
        128, "A preset's vocabulary is the tokenizer's, rounded up to a multiple of this.", min=1
    )


@dataclass(frozen=True)
class Data:
    """Data: the corpus and its sample order."""

    data: tuple[str, ...] = option(
        (),
        "Data prefix (PREFIX.bin/.idx); repeat for a blend, or one 'W1 P1 W2 P2' string.",
        required=True,
    )
    data_weights: tuple[float, ...] | None = option(
        None, "Blend weights, one per --data (comma-separated)."
    )
    split: str = option("949,50,1", "Train/valid/test split of the documents.")
    data_cache_dir: str | None = option(
        None, "Where sample indices are cached (default: index-cache/ beside the data)."
    )
    max_epochs: int = option(
        1, "Passes over the train split the run may make; more steps than that is refused.", min=1
    )


@dataclass(frozen=True)
class Parallel:
    """Parallel layout: data, tensor and pipeline parallel degrees and their options."""

    strategy: str = option(
        "dp1", "Parallel layout, e.g. dp2mp2pp2, mp2, dp4mp2 (degrees multiply to the processes)."
    )
    pp_schedule: str = option("1F1B", "Pipeline schedule when pp > 1.", choices=SCHEDULE_CHOICES)
    virtual_pp_degree: int = option(
        1,
        "Chunks of layers per pipeline rank under --pp-schedule VPP (interleaved: rank r runs "
        "chunks r, r+pp, ...); needs the layers to split evenly into pp × this many chunks.",
        min=1,
    )
    sequence_parallel: bool = option(
        False,
        "Split the activations along the sequence over mp between the tensor-parallel blocks "
        "(needs mp > 1; GPU only: it reduce-scatters).",
    )
    sharding_stage: int = option(
        0,
        "ZeRO sharding over dp: 1 optimizer state, 2 also gradients, 3 also parameters; 0 off "
        "(needs dp > 1; GPU only: it reduce-scatters).",
        min=0,
    )


@dataclass(frozen=True)
class Training:
    """Training: batch, sequence, steps and how each step computes."""

    seq_len: int | None = option(
        None,
        "Tokens per sample (default: the model's max_position_embeddings, at most 2048).",
        min=1,
    )
    micro_batch_size: int = option(1, "Samples per micro-batch per data-parallel rank.", min=1)
    grad_accum: int | None = option(
        None,
        "Micro-batches per step (gradient accumulation; pipeline micro-batches). Default 1, or "
        "from --global-batch-size.",
        min=1,
    )
    global_batch_size: int | None = option(
        None, "Samples per step; sets --grad-accum = global / (micro-batch-size × dp).", min=1
    )
    max_steps: int = option(
        2000, "Optimizer steps of the whole run (a resumed run continues up to it).", min=1
    )
    seed: int = option(1234, "Seed of the weights, the data order and every random draw.")
    amp: str = option(
        "off",
        "Mixed precision compute (GPU only; parameters and optimizer stay float32).",
        choices=AMP_CHOICES,
    )
    to_static: bool = option(
        False, "Compile the step with dist.to_static (where the backend supports it)."
    )
    recompute: bool = option(False, "Recompute activations in the backward pass (saves memory).")
    recompute_granularity: str = option(
        "full",
        "What --recompute recomputes: each decoder layer or the attention block.",
        choices=RECOMPUTE_CHOICES,
    )

    def micro_batches(self, dp: int) -> int:
        """Micro-batches per step: --grad-accum, else what --global-batch-size makes of it."""
        if self.grad_accum is not None:
            return self.grad_accum
        if self.global_batch_size is not None:
            return self.global_batch_size // (self.micro_batch_size * dp)
        return 1


@dataclass(frozen=True)
class Optimizer:
    """Optimizer: AdamW and the gradient clipping before it."""

    lr: float = option(3e-5, "Peak learning rate.", min=0.0)
    adam_beta1: float = option(0.9, "AdamW beta1.")
    adam_beta2: float = option(0.999, "AdamW beta2.")
    adam_eps: float = option(1e-8, "AdamW epsilon.")
    weight_decay: float = option(
        0.01, "AdamW decoupled weight decay (not applied to norm weights).", min=0.0
    )
    clip_grad: float = option(
        1.0, "Clip gradients to this global L2 norm over all shards and stages (0: off).", min=0.0
    )


@dataclass(frozen=True)
class Schedule:
    """Learning-rate schedule: warmup, then decay to a minimum."""

    min_lr: float = option(3e-6, "Learning rate at the end of the decay.", min=0.0)
    warmup_steps: int | None = option(
        None, "Linear warmup steps (default: 1% of --max-steps).", min=0
    )
    decay_steps: int | None = option(
        None, "Step at which the decay reaches --min-lr (default: --max-steps).", min=1
    )
    decay_style: str = option("linear", "Decay after warmup.", choices=DECAY_CHOICES)


@dataclass(frozen=True)
class Eval:
    """Evaluation on the valid split."""

    eval_every: int = option(1000, "Evaluate on the valid split every N steps (0: never).", min=0)
    eval_iters: int = option(
        10,
        "Global batches per evaluation (the first ones of the valid split, the same each time).",
        min=1,
    )


@dataclass(frozen=True)
class Checkpoint:
    """Checkpoints: saving and resuming."""

    save_every: int = option(
        1000, "Save a checkpoint every N steps (0: only at the end and on SIGTERM).", min=0
    )
    keep_last: int = option(
        2,
        "Checkpoints kept (older ones are deleted after a newer one is complete; 0: keep all).",
        min=0,
    )
    resume: str | None = option(
        None, "'auto' (the latest checkpoint of OUTPUT, if any) or a checkpoint directory."
    )


@dataclass(frozen=True)
class Logging:
    """Logging: what each logged step reports, and where."""

    log_every: int = option(1, "Log a line and a metrics record every N steps.", min=1)
    report_to: str = option(
        "jsonl",
        "Where records go, comma-separated: jsonl (OUTPUT/metrics.jsonl, always), tensorboard, "
        "wandb, visualdl (each an extra: pip install 'llama-train[tensorboard]', ...).",
    )
    peak_tflops: float | None = option(
        None,
        "Peak TFLOP/s of one device, for MFU, > 0 (default: known GPUs in the compute dtype; "
        "none on CPU).",
        above=0.0,
    )


@dataclass(frozen=True)
class Profiling:
    """Profiling: Paddle's profiler over a range of steps."""

    profile_steps: str | None = option(
        None,
        "Profile steps A-B (e.g. 5-7): a Paddle profiler trace per rank under "
        "OUTPUT/profile/step-A-B/rank-N/ and the operator table once; nothing outside them.",
    )


@dataclass(frozen=True)
class Launch:
    """Launch: processes and nodes, as paddle.distributed.launch starts them."""

    nproc_per_node: int | None = option(
        None, "Processes on this node (default: the strategy's size / --nnodes).", min=1
    )
    nnodes: int | None = option(
        None,
        "Nodes of a multi-node job (default: Slurm's SLURM_NNODES or a PaddleJob's "
        "PADDLE_NNODES under those schedulers, else 1); given, the scheduler's variables are "
        "not read.",
        min=1,
    )
    master: str | None = option(None, "IP:PORT of the rendezvous for a multi-node job.")
    master_port: int | None = option(
        None,
        "Port of the rendezvous under Slurm, on the first node of SLURM_JOB_NODELIST (default: "
        "derived from the job id).",
        min=1,
    )
    node_rank: int | None = option(None, "This node's rank in a multi-node job.", min=0)
    plan_check: bool = option(
        True,
        "On a GPU, refuse a layout whose predicted memory does not fit the device before "
        "starting any process (llama-train plan's prediction); --no-plan-check launches anyway.",
    )


@dataclass(frozen=True)
class Resilience:
    """Resilience: restarts, hang detection and a wall-clock limit."""

    max_restarts: int = option(
        0,
        "Restart a failed job from its last complete checkpoint up to N times (not after a "
        "user's mistake or a non-finite loss; stops in a crash loop). Ledger: "
        "OUTPUT/restarts.jsonl.",
        min=0,
    )
    hang_timeout: str = option(
        "auto",
        "Stop (and restart) a launched job when no rank has made progress for SECONDS; 'auto' "
        "scales it from the measured step, save and evaluation times; 0 never.",
        number_as_text=True,
    )
    max_duration: str | None = option(
        None,
        "Wall-clock limit of this command (3h50m, 45m, 90s or seconds): save at the last step "
        "boundary that leaves time for it and exit 0. SIGUSR1 does the same at the next step.",
        number_as_text=True,
    )


@dataclass(frozen=True)
class RunConfig:
    """Every option of a training job, by section (``cfg.parallel.strategy``)."""

    job: Job = field(default_factory=Job)
    model: Model = field(default_factory=Model)
    data: Data = field(default_factory=Data)
    parallel: Parallel = field(default_factory=Parallel)
    training: Training = field(default_factory=Training)
    optimizer: Optimizer = field(default_factory=Optimizer)
    schedule: Schedule = field(default_factory=Schedule)
    eval: Eval = field(default_factory=Eval)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    logging: Logging = field(default_factory=Logging)
    profiling: Profiling = field(default_factory=Profiling)
    launch: Launch = field(default_factory=Launch)
    resilience: Resilience = field(default_factory=Resilience)

    def value(self, name: str) -> Any:
        """One option by its flat name (``"strategy"``)."""
        return getattr(getattr(self, OPTIONS[name].section), name)

    def flat(self) -> dict[str, Any]:
        """Every option by its flat name, as the flags name them."""
        return {name: self.value(name) for name in OPTIONS}

    def sections(self) -> dict[str, dict[str, Any]]:
        """Every option by section, as a config file holds them (lists for tuples)."""
        return {
            section: {name: plain(self.value(name)) for name in names}
            for section, names in SECTION_OPTIONS.items()
        }

    @classmethod
    def read(cls, path: str) -> RunConfig:
        """The options of a config file (any form, run_config.json included), checked."""
        from llama_train.config_file import read_config_file  # which imports this module

        return resolve(read_config_file(path), {})


def plain(value: Any) -> Any:
    """An option's value as a file holds it (a list for a tuple)."""
    return list(value) if isinstance(value, tuple) else value


# ------------------------------------------------------------------------------ types and rules
@dataclass(frozen=True)
class Kind:
    """An option's type, read from its annotation: a scalar, or a tuple of them."""

    base: type  # str, int, float or bool
    sequence: bool = False

    @classmethod
    def of(cls, hint: Any) -> Kind:
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if typing.get_origin(hint) is tuple:
            return cls(typing.get_args(hint)[0], sequence=True)
        if hint not in (str, int, float, bool):
            raise TypeError(f"an option cannot have type {hint!r}")
        return cls(hint)

    def describe(self) -> str:
        one = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
        many = {str: "a list of strings", float: "a list of numbers", int: "a list of integers"}
        return many[self.base] if self.sequence else one[self.base]

    def coerce(self, value: Any, where: str) -> Any:
        """``value`` as this kind (a tuple for a sequence); ``where`` names it in the refusal.
        A sequence also takes one string: ``data`` one prefix or blend, numbers comma-separated
        (what its flag gives)."""
        if self.sequence:
            if isinstance(value, str):
                if self.base is str:
                    return (value,)
                try:
                    return tuple(self.base(item) for item in value.replace(",", " ").split())
                except ValueError:
                    raise TrainError(f"{where} must be {self.describe()}, got {value!r}") from None
            if not isinstance(value, (list, tuple)) or not all(self._fits(v) for v in value):
                raise TrainError(f"{where} must be {self.describe()}, got {value!r}")
            return tuple(self.base(v) for v in value)
        if not self._fits(value):
            raise TrainError(f"{where} must be {self.describe()}, got {value!r}")
        return self.base(value)

    def _fits(self, value: Any) -> bool:
        if isinstance(value, bool):  # a bool is an int to Python, not to a config file
            return self.base is bool
        if self.base is float:
            return isinstance(value, (int, float))
        return isinstance(value, self.base)


@dataclass(frozen=True)
class OptionSpec:
    """One option: its flat name, section, type, default and rule."""

    name: str
    section: str
    kind: Kind
    default: Any
    rule: Rule

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def coerce(self, value: Any, where: str) -> Any:
        """``value`` as this option's type (``Kind.coerce``); seconds given as a number to a text
        option that takes them are its text."""
        if self.rule.number_as_text and type(value) in (int, float):
            value = f"{value:g}"
        return self.kind.coerce(value, where)


def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(RunConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(RunConfig)}


def _specs() -> dict[str, OptionSpec]:
    out = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in out:
                raise TypeError(f"option {f.name!r} is declared in two sections")
            kind = Kind.of(hints[f.name])
            out[f.name] = OptionSpec(f.name, section, kind, f.default, f.metadata["rule"])
    return out


SECTIONS: dict[str, type] = _section_classes()
OPTIONS: dict[str, OptionSpec] = _specs()  # every option by flat name, in declaration order
SECTION_OPTIONS: dict[str, list[str]] = {
    section: [f.name for f in dataclasses.fields(cls)] for section, cls in SECTIONS.items()
}


# ------------------------------------------------------------------------------ resolution
def resolve(file_values: dict[str, Any], flag_values: dict[str, Any]) -> RunConfig:
    """Defaults < file (``config_file.read_config_file``) < flags (a flag left unset is None, or an
    empty tuple for a repeated flag, and does not override), each value coerced to its option's
    type, then checked."""
    merged: dict[str, Any] = {}
    for source in (file_values, flag_values):
        for name, value in source.items():
            if value is None or value == ():
                continue
            spec = OPTIONS[name]
            merged[name] = spec.coerce(value, spec.flag)
    sections = {
        section: cls(**{n: merged[n] for n in SECTION_OPTIONS[section] if n in merged})
        for section, cls in SECTIONS.items()
    }
    cfg = RunConfig(**sections)
    check(cfg)
    return cfg


def check(cfg: RunConfig) -> None:
    """The checks that need no data and no model: each option's rule, then their consistency.
    Raises TrainError with one line; changes nothing."""
    from llama_model import LlamaModelError, Strategy

    for name, spec in OPTIONS.items():
        value = cfg.value(name)
        rule = spec.rule
        if rule.required and value in (None, ()):
            raise TrainError(f"missing option {spec.flag} (on the command line or in --config)")
        if value is None:
            continue
        # Every float (and float list) is finite: NaN passes any comparison below and ∞ most.
        for number in value if isinstance(value, tuple) else [value]:
            if isinstance(number, float) and not math.isfinite(number):
                what = "finite numbers" if isinstance(value, tuple) else "a finite number"
                raise TrainError(f"{spec.flag} must be {what}, got {number}")
        if rule.choices and value not in rule.choices:
            raise TrainError(f"{spec.flag} must be one of {', '.join(rule.choices)}, got {value!r}")
        if rule.min is not None and value < rule.min:
            raise TrainError(f"{spec.flag} must be ≥ {rule.min}, got {value}")
        if rule.above is not None and not value > rule.above:
            raise TrainError(f"{spec.flag} must be > {rule.above:g}, got {value:g}")
    if cfg.model.model_config is None and cfg.model.init_from is None:
        raise TrainError(
            "missing option --model-config (a preset or config.json), or --init-from (weights with "
            "their config.json)"
        )
    try:
        degrees = Strategy.parse(cfg.parallel.strategy)
    except LlamaModelError as exc:
        raise TrainError(f"--strategy: {exc}") from None
    data, training = cfg.data, cfg.training
    if data.data_weights is not None and len(data.data_weights) != len(data.data):
        raise TrainError(
            f"{len(data.data_weights)} --data-weights for {len(data.data)} --data prefixes"
        )
    if training.global_batch_size is not None:
        per_pass = training.micro_batch_size * degrees.dp
        if training.global_batch_size % per_pass:
            raise TrainError(
                f"--global-batch-size {training.global_batch_size} is not a multiple of "
                f"micro-batch-size {training.micro_batch_size} × dp{degrees.dp} = {per_pass}"
            )
        accum = training.global_batch_size // per_pass
        if training.grad_accum is not None and training.grad_accum != accum:
            raise TrainError(
                f"--grad-accum {training.grad_accum} contradicts --global-batch-size "
                f"{training.global_batch_size} (which needs {accum})"
            )
    from llama_train.reporting import parse_report_to

    parse_report_to(cfg.logging.report_to)
    if cfg.profiling.profile_steps is not None:
        _, last = parse_profile_steps(cfg.profiling.profile_steps)
        if last > training.max_steps:
            raise TrainError(
                f"--profile-steps {cfg.profiling.profile_steps} ends after --max-steps "
                f"{training.max_steps}"
            )
    opt, schedule = cfg.optimizer, cfg.schedule
    if schedule.min_lr > opt.lr:
        raise TrainError(f"--min-lr {schedule.min_lr} exceeds --lr {opt.lr}")
    if not 0 <= opt.adam_beta1 < 1 or not 0 <= opt.adam_beta2 < 1:
        raise TrainError("--adam-beta1 and --adam-beta2 must lie in [0, 1)")
    if not opt.adam_eps > 0:
        raise TrainError("--adam-eps must be > 0")
    if warmup_steps(cfg) > decay_end(cfg):
        raise TrainError(
            f"--warmup-steps {warmup_steps(cfg)} exceeds the decay's end ({decay_end(cfg)})"
        )
    resilience = cfg.resilience
    hang_timeout_s(resilience.hang_timeout)
    if resilience.max_duration is not None:
        parse_duration(resilience.max_duration, "--max-duration")
    # the launch options alone; the topology (with a scheduler's variables) is run_record's
    launch = cfg.launch
    if launch.nnodes is not None:
        from llama_train.cluster import resolve_topology

        resolve_topology(launch, degrees.world_size, environ={})


def warmup_steps(cfg: RunConfig) -> int:
    """--warmup-steps, by default 1% of --max-steps (rounded up)."""
    given = cfg.schedule.warmup_steps
    return given if given is not None else math.ceil(0.01 * cfg.training.max_steps)


def decay_end(cfg: RunConfig) -> int:
    """The step at which the decay reaches --min-lr: --decay-steps, by default --max-steps."""
    given = cfg.schedule.decay_steps
    return given if given is not None else cfg.training.max_steps


def hang_timeout_s(value: str) -> float | None:
    """--hang-timeout as seconds: None for ``auto``, 0 for never."""
    if value == "auto":
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not (math.isfinite(seconds) and seconds >= 0):
        raise TrainError(f"--hang-timeout must be SECONDS (≥ 0), auto or 0, got {value!r}")
    return seconds


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str, flag: str) -> float:
    """``3h50m``, ``45m``, ``90s``, ``1h30m15s`` or plain seconds (``5400``) -> seconds, > 0."""
    text = text.strip()
    seconds = None
    try:
        seconds = float(text)
    except ValueError:
        found = _DURATION.fullmatch(text)
        if found and text:
            h, m, s = (float(g) if g else 0.0 for g in found.groups())
            seconds = 3600 * h + 60 * m + s
    if seconds is None or not (math.isfinite(seconds) and seconds > 0):
        raise TrainError(
            f"{flag} must be a duration such as 3h50m, 45m, 90s or seconds, got {text!r}"
        )
    return seconds


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

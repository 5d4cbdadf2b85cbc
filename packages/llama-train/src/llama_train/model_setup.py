"""From options to the model's shape and parallel layout: LlamaConfig, vocabulary, Strategy, checks.

A preset gives the network's shape; its vocabulary becomes the tokenizer's, rounded up to a multiple
of ``--make-vocab-size-divisible-by`` (Megatron's padding, kept independent of mp so that a
checkpoint moves between layouts). A config file is taken as it is: the tokenizer must fit in it.
"""

from __future__ import annotations

import os

from llama_model import PRESETS, LlamaConfig, LlamaModelError, Strategy, preset
from llama_train.errors import TrainError
from llama_train.options import RunConfig

DEFAULT_MAX_SEQ_LEN = 2048


def tokenizer_vocab_size(spec: str) -> int:
    from llama_data import DataError, load_tokenizer

    try:
        return int(load_tokenizer(spec).vocab_size)
    except DataError as exc:
        raise TrainError(f"--tokenizer: {exc}") from None


def model_config(cfg: RunConfig) -> LlamaConfig:
    """The model's shape: --model-config (a preset or a file), or the config.json of --init-from;
    with both, they must agree. The tokenizer must fit in its vocabulary."""
    vocab = tokenizer_vocab_size(cfg.tokenizer) if cfg.tokenizer else None
    stored = _init_from_config(cfg) if cfg.init_from else None
    if cfg.model_config is None:
        config = stored
    else:
        config = _named_config(cfg, vocab)
        if stored is not None and stored != config:
            raise TrainError(
                f"--model-config differs from the config.json of --init-from"
                f"{first_difference(stored, config, 'init-from')}"
            )
    if vocab is not None and vocab > config.vocab_size:
        raise TrainError(
            f"the tokenizer has {vocab} tokens but the model's vocab_size is {config.vocab_size}"
        )
    return config


def _named_config(cfg: RunConfig, vocab: int | None) -> LlamaConfig:
    try:
        if cfg.model_config in PRESETS:
            if vocab is None:
                return preset(cfg.model_config)
            step = cfg.make_vocab_size_divisible_by
            return preset(cfg.model_config, vocab_size=-(-vocab // step) * step)
        if not os.path.exists(cfg.model_config):
            raise TrainError(
                f"--model-config {cfg.model_config!r} is neither a preset ({', '.join(PRESETS)}) nor a file"
            )
        return LlamaConfig.from_json(cfg.model_config)
    except LlamaModelError as exc:
        raise TrainError(f"--model-config: {exc}") from None


def _init_from_config(cfg: RunConfig) -> LlamaConfig | None:
    weights = open_init_weights(cfg)
    try:
        config = weights.config()
    except LlamaModelError as exc:
        raise TrainError(f"--init-from: {exc}") from None
    if config is None and cfg.model_config is None:
        raise TrainError(
            f"--init-from {cfg.init_from}: no config.json in {weights.directory}; pass --model-config"
        )
    return config


def open_init_weights(cfg: RunConfig):
    """The weights of --init-from, opened (headers only) with --init-layout."""
    from llama_model.pretrained import PretrainedWeights

    try:
        return PretrainedWeights.open(cfg.init_from, layout=cfg.init_layout)
    except LlamaModelError as exc:
        raise TrainError(f"--init-from: {exc}") from None


def check_init_weights(cfg: RunConfig, config: LlamaConfig):
    """--init-from opened and checked against ``config`` (every name and shape), in one line."""
    weights = open_init_weights(cfg)
    try:
        weights.check(config)
    except LlamaModelError as exc:
        raise TrainError(f"--init-from: {exc}") from None
    return weights


def first_difference(a: LlamaConfig, b: LlamaConfig, a_name: str = "checkpoint") -> str:
    """`` (field: A's value, asked value)`` for the first field where two configs differ."""
    for name, value in vars(b).items():
        if name != "extra" and vars(a).get(name) != value:
            return f" ({name}: {a_name} {vars(a).get(name)!r}, asked {value!r})"
    return ""


def strategy_of(cfg: RunConfig) -> Strategy:
    """The run's one Strategy: built by the front process from the options (the strategy string's
    degrees, parsed once) and stored in ``cfg.parallel``; the ranks read it back from there."""
    try:
        if cfg.parallel is not None:
            return Strategy.from_dict(cfg.parallel)
        dp, mp, pp = cfg.dp_mp_pp
        strategy = Strategy(
            dp=dp,
            mp=mp,
            pp=pp,
            micro_batches=cfg.accumulation,
            schedule=cfg.pp_schedule,
            virtual_pp_degree=cfg.virtual_pp_degree,
            sequence_parallel=cfg.sequence_parallel,
            sharding_stage=cfg.sharding_stage,
        )
    except LlamaModelError as exc:
        raise TrainError(f"--strategy: {exc}") from None
    cfg.parallel = strategy.to_dict()
    return strategy


def resolve_seq_len(cfg: RunConfig, config: LlamaConfig) -> None:
    if cfg.seq_len is None:
        cfg.seq_len = min(config.max_position_embeddings, DEFAULT_MAX_SEQ_LEN)
    if cfg.seq_len > config.max_position_embeddings:
        raise TrainError(
            f"--seq-len {cfg.seq_len} exceeds the model's max_position_embeddings ({config.max_position_embeddings})"
        )


def check_layout(cfg: RunConfig, config: LlamaConfig, strategy: Strategy) -> None:
    """Degrees against the model and the batch, and what the backend can run, each in one line."""
    from llama_model import check_backend_support, check_static_supported

    try:
        strategy.validate(config, global_batch=cfg.batch_size)
        check_backend_support(strategy, compute_dtype(cfg))
    except LlamaModelError as exc:
        raise TrainError(str(exc)) from None
    if cfg.to_static:
        if cfg.accumulation > 1:
            raise TrainError(
                "--to-static runs the global batch as one micro-batch: use --grad-accum 1 "
                "(raise --micro-batch-size instead, or leave --global-batch-size out)"
            )
        try:
            check_static_supported(strategy, compute_dtype=compute_dtype(cfg))
        except LlamaModelError as exc:
            raise TrainError(f"--to-static: {exc}") from None


def compute_dtype(cfg: RunConfig) -> str:
    if cfg.amp == "fp16":
        raise TrainError(
            "--amp fp16 is not supported: the model computes in float32 or bfloat16 (fp16 would need "
            "loss scaling, and on CPU Paddle 3.3.1 has no fp16 training kernels); use --amp bf16 on a GPU"
        )
    return {"off": "float32", "bf16": "bfloat16"}[cfg.amp]

"""From options to the model's shape: LlamaConfig, vocabulary, the init weights; the layout's checks.

A preset gives the network's shape; its vocabulary becomes the tokenizer's, rounded up to a multiple
of ``--make-vocab-size-divisible-by`` (Megatron's padding, kept independent of mp so that a
checkpoint moves between layouts). A config file is taken as it is: the tokenizer must fit in it.
"""

from __future__ import annotations

import dataclasses
import os

from llama_model import PRESETS, LlamaConfig, LlamaModelError, preset
from llama_train.errors import TrainError
from llama_train.options import Model
from llama_train.run_record import RunRecord


def tokenizer_vocab_size(spec: str) -> int:
    from llama_data import DataError, load_tokenizer

    try:
        return int(load_tokenizer(spec).vocab_size)
    except DataError as exc:
        raise TrainError(f"--tokenizer: {exc}") from None


def model_config(model: Model) -> LlamaConfig:
    """The model's shape: --model-config (a preset or a file), or the config.json of --init-from;
    with both, they must agree. The tokenizer must fit in its vocabulary."""
    vocab = tokenizer_vocab_size(model.tokenizer) if model.tokenizer else None
    stored = _init_from_config(model) if model.init_from else None
    if model.model_config is None:
        config = stored
    else:
        config = _named_config(model, vocab)
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


def _named_config(model: Model, vocab: int | None) -> LlamaConfig:
    try:
        if model.model_config in PRESETS:
            if vocab is None:
                return preset(model.model_config)
            step = model.make_vocab_size_divisible_by
            return preset(model.model_config, vocab_size=-(-vocab // step) * step)
        if not os.path.exists(model.model_config):
            raise TrainError(
                f"--model-config {model.model_config!r} is neither a preset ({', '.join(PRESETS)}) nor a file"
            )
        return LlamaConfig.from_json(model.model_config)
    except LlamaModelError as exc:
        raise TrainError(f"--model-config: {exc}") from None


def _init_from_config(model: Model) -> LlamaConfig | None:
    weights = open_init_weights(model)
    try:
        config = weights.config()
    except LlamaModelError as exc:
        raise TrainError(f"--init-from: {exc}") from None
    if config is None and model.model_config is None:
        raise TrainError(
            f"--init-from {model.init_from}: no config.json in {weights.directory}; pass --model-config"
        )
    return config


def _refuse_two_formats(init_from: str) -> None:
    """A model directory holding safetensors weights and a .pdparams file: which one is meant is
    not for llama-train to guess (llama-ckpt-tools would read the safetensors)."""
    from llama_ckpt import CheckpointError
    from llama_ckpt.distcp import is_dist_checkpoint
    from llama_ckpt.runs import resolve_checkpoint

    try:
        directory = resolve_checkpoint(init_from)
        names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    except (CheckpointError, OSError):
        return  # said in one line by the opening that follows
    if not names or is_dist_checkpoint(directory):
        return
    safetensors = [n for n in names if n.endswith(".safetensors")]
    pdparams = [n for n in names if n.endswith(".pdparams")]
    if not safetensors or not pdparams:
        return
    here = os.path.join(init_from, "")
    which = f"both safetensors weights ({', '.join(safetensors)}) and .pdparams weights ({', '.join(pdparams)})"
    if len(safetensors) == 1 and len(pdparams) == 1:
        how = (
            f"pass the file to start from: --init-from {here}{safetensors[0]} or --init-from "
            f"{here}{pdparams[0]} (its config.json is read all the same)"
        )
    elif len(pdparams) == 1:
        how = (
            f"move {pdparams[0]} out of it to start from the safetensors, or pass --init-from "
            f"{here}{pdparams[0]}"
        )
    else:
        how = "move the files of the weights not meant out of it"
    raise TrainError(f"--init-from {init_from} holds {which}: {how}")


def open_init_weights(model: Model):
    """The weights of --init-from, opened (headers only) with --init-layout."""
    from llama_model.pretrained import PretrainedWeights

    _refuse_two_formats(model.init_from)
    try:
        return PretrainedWeights.open(model.init_from, layout=model.init_layout)
    except LlamaModelError as exc:
        raise TrainError(f"--init-from: {exc}") from None


def check_init_weights(model: Model, config: LlamaConfig):
    """--init-from opened and checked against ``config`` (every name and shape), in one line."""
    weights = open_init_weights(model)
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


def check_layout(record: RunRecord, config: LlamaConfig) -> None:
    """Degrees against the model and the batch, and what the backend can run, each in one line."""
    from llama_model import check_backend_support, check_static_supported

    strategy, training = record.strategy, record.options.training
    try:
        strategy.validate(config, global_batch=record.batch_size)
    except LlamaModelError as exc:
        raise TrainError(str(exc)) from None
    # What the backend cannot run, named by the option that asks for it.
    dtype = compute_dtype(training.amp)
    plain = dataclasses.replace(strategy, sequence_parallel=False, sharding_stage=0)
    with_sp = dataclasses.replace(plain, sequence_parallel=strategy.sequence_parallel)
    for option, asked in (("--amp", plain), ("--sequence-parallel", with_sp),
                          ("--sharding-stage", strategy)):  # fmt: skip
        try:
            check_backend_support(asked, dtype)
        except LlamaModelError as exc:
            raise TrainError(f"{option}: {exc}") from None
    if training.to_static:
        if record.micro_batches > 1:
            raise TrainError(
                "--to-static runs the global batch as one micro-batch: use --grad-accum 1 "
                "(raise --micro-batch-size instead, or leave --global-batch-size out)"
            )
        try:
            check_static_supported(strategy, compute_dtype=dtype)
        except LlamaModelError as exc:
            raise TrainError(f"--to-static: {exc}") from None


def compute_dtype(amp: str) -> str:
    """The compute dtype of --amp."""
    if amp == "fp16":
        raise TrainError(
            "--amp fp16 is not supported: the model computes in float32 or bfloat16 (fp16 would need "
            "loss scaling, and on CPU Paddle 3.3.1 has no fp16 training kernels); use --amp bf16 on a GPU"
        )
    return {"off": "float32", "bf16": "bfloat16"}[amp]

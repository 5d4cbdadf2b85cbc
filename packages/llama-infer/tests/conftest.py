"""Tiny random models written as model directories (through llama-ckpt's export), shared by the tests."""

from __future__ import annotations

import os
import sys

import numpy as np
import paddle
import pytest

from llama_ckpt import export
from llama_model import LlamaConfig, LlamaForCausalLM

paddle.base.core.set_num_threads(1)  # the suite's models are tiny; extra threads only contend

sys.path.insert(0, os.path.dirname(__file__))


def tiny_config(**overrides) -> LlamaConfig:
    fields = dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        rms_norm_eps=1e-6, rope_theta=10000.0, initializer_range=0.2, eos_token_id=2,
        bos_token_id=1, pad_token_id=0,
    )  # fmt: skip
    fields.update(overrides)
    return LlamaConfig(**fields)


def random_model(config: LlamaConfig, seed: int = 0) -> LlamaForCausalLM:
    model = LlamaForCausalLM(config)
    model.init_weights(seed)
    model.eval()
    return model


def save_pdparams(model: LlamaForCausalLM, directory: str) -> str:
    """``model.pdparams`` + ``config.json`` in ``directory`` (what a PaddleNLP-style save looks like)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "model.pdparams")
    paddle.save(model.state_dict(), path)
    model.config.to_json(directory)
    return path


def write_model_dir(model: LlamaForCausalLM, out: str, layout: str = "paddle", **kw) -> str:
    """A model directory of DESIGN §2.4 written by llama-ckpt's exporter."""
    src = save_pdparams(model, out + "-src")
    export(src, out, layout=layout, **kw)
    return out


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """MHA and GQA (tied) models, each in both layouts: {name: (model, paddle_dir, hf_dir)}."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, cfg in {
        "mha": tiny_config(),
        "gqa": tiny_config(
            num_key_value_heads=2, tie_word_embeddings=True, rope_theta=500.0, rms_norm_eps=1e-5
        ),
    }.items():
        model = random_model(cfg, seed=len(out) + 1)
        paddle_dir = write_model_dir(model, str(root / f"{name}-paddle"))
        hf_dir = write_model_dir(model, str(root / f"{name}-hf"), layout="hf", split_num=2)
        out[name] = (model, paddle_dir, hf_dir)
    return out


def padded_prompts(seed: int, lengths, vocab: int = 256) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, n).tolist() for n in lengths]

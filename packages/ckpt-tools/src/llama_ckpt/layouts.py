"""Parameter names and orientations of the two model-directory layouts (paddle and hf).

paddle (PaddleNLP): `llama.embed_tokens.weight`, `llama.layers.{i}.self_attn.q_proj.weight`, ...,
`llama.norm.weight`, `lm_head.weight`; Linear weights stored `[in, out]`.
hf (transformers): `model.` instead of `llama.`, `lm_head.weight` unchanged; Linear weights
`[out, in]`. Embeddings and norms are the same in both.

Everything else in this package speaks paddle names; this module is the one place that knows hf,
for the whole project (llama-model re-exports ``state_dict_to_hf`` / ``state_dict_from_hf``).
"""

from __future__ import annotations

import re

import numpy as np

PADDLE, HF = "paddle", "hf"
LAYOUTS = (PADDLE, HF)

# Linear layers: transposed between the layouts.
_LINEAR = re.compile(r"(^|\.)(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$")
LM_HEAD = "lm_head.weight"
EMBED = "llama.embed_tokens.weight"


def is_linear(paddle_name: str, ndim: int) -> bool:
    return ndim == 2 and (paddle_name == LM_HEAD or bool(_LINEAR.search(paddle_name)))


def to_hf_name(paddle_name: str) -> str:
    if paddle_name.startswith("llama."):
        return "model." + paddle_name[len("llama.") :]
    return paddle_name


def from_hf_name(hf_name: str) -> str:
    if hf_name.startswith("model."):
        return "llama." + hf_name[len("model.") :]
    return hf_name


def to_hf_shape(paddle_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(reversed(shape)) if is_linear(paddle_name, len(shape)) else tuple(shape)


def to_hf(paddle_name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    if is_linear(paddle_name, array.ndim):
        array = np.ascontiguousarray(array.T)
    return to_hf_name(paddle_name), array


def from_hf(hf_name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    name = from_hf_name(hf_name)
    if is_linear(name, array.ndim):
        array = np.ascontiguousarray(array.T)
    return name, array


def state_dict_to_hf(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A whole state dict of numpy arrays from the paddle layout to the hf one."""
    return dict(to_hf(name, array) for name, array in state.items())


def state_dict_from_hf(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A whole state dict of numpy arrays from the hf layout to the paddle one."""
    return dict(from_hf(name, array) for name, array in state.items())


def detect(names: list[str], default: str | None = PADDLE) -> str | None:
    """hf when the names look like transformers' (model.layers..., model.embed_tokens...), paddle
    when they look like PaddleNLP's (llama....); ``default`` when they say neither."""
    if any(n.startswith("llama.") for n in names):
        return PADDLE
    if any(n.startswith(("model.layers.", "model.embed_tokens.", "model.norm.")) for n in names):
        return HF
    return default

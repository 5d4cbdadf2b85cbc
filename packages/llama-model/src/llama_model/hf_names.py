"""PaddleNLP-style names (this package's) <-> Hugging Face transformers names.

Paddle stores a Linear weight as [in, out]; transformers as [out, in]. ``state_dict_to_hf`` / ``state_dict_from_hf`` rename
and transpose numpy arrays; embeddings and norms keep their shape.
"""

from __future__ import annotations

import numpy as np


def hf_name(name: str) -> str:
    """``llama.layers.0.self_attn.q_proj.weight`` -> ``model.layers.0.self_attn.q_proj.weight``."""
    return "model." + name[len("llama.") :] if name.startswith("llama.") else name


def paddle_name(name: str) -> str:
    return "llama." + name[len("model.") :] if name.startswith("model.") else name


def _is_linear(name: str) -> bool:
    return name.endswith("_proj.weight") or name == "lm_head.weight"


def state_dict_to_hf(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        hf_name(k): (np.ascontiguousarray(v.T) if _is_linear(k) else v) for k, v in state.items()
    }


def state_dict_from_hf(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in state.items():
        name = paddle_name(k)
        out[name] = np.ascontiguousarray(v.T) if _is_linear(name) else v
    return out

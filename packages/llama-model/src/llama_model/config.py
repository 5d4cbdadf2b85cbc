"""LlamaConfig: the fields of a Hugging Face LLaMA ``config.json``, validated, plus named presets.

The JSON field names are exactly Hugging Face's, so a ``config.json`` written here loads in
``transformers.LlamaConfig`` and one from the Hub loads here. Unknown keys of a Hub file (``torch_dtype``,
``architectures``, ...) are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from llama_model.errors import LlamaModelError

# Keys of a Hub config.json that do not change the network; read and kept, never required.
_PASSTHROUGH_DEFAULTS = {"model_type": "llama", "hidden_act": "silu"}
_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = (
        None  # None means multi-head attention (= num_attention_heads)
    )
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.validate()

    # ----------------------------------------------------------------------------------- derived
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_key_value_groups(self) -> int:
        """Query heads sharing one key/value head (1 = MHA, >1 = grouped-query attention)."""
        return self.num_attention_heads // self.num_key_value_heads

    def num_parameters(self) -> int:
        h, i, v, n = (
            self.hidden_size,
            self.intermediate_size,
            self.vocab_size,
            self.num_hidden_layers,
        )
        kv = self.num_key_value_heads * self.head_dim
        per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h
        return v * h * (1 if self.tie_word_embeddings else 2) + n * per_layer + h

    # -------------------------------------------------------------------------------- validation
    def validate(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise LlamaModelError(f"{name} must be a positive integer, got {value!r}")

        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        ):
            positive(name)
        if self.hidden_size % self.num_attention_heads:
            raise LlamaModelError(
                f"num_attention_heads ({self.num_attention_heads}) must divide hidden_size ({self.hidden_size})"
            )
        if self.head_dim % 2:
            raise LlamaModelError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if self.num_attention_heads % self.num_key_value_heads:
            raise LlamaModelError(
                f"num_key_value_heads ({self.num_key_value_heads}) must divide "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if not self.rms_norm_eps > 0:
            raise LlamaModelError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if not self.rope_theta > 0:
            raise LlamaModelError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if not self.initializer_range > 0:
            raise LlamaModelError(f"initializer_range must be > 0, got {self.initializer_range!r}")
        if self.rope_scaling is not None:
            rope_type = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            if rope_type not in _ROPE_TYPES:
                raise LlamaModelError(
                    f"rope_scaling type {rope_type!r} is not supported (supported: {', '.join(_ROPE_TYPES)})"
                )
            if rope_type != "default" and not self.rope_scaling.get("factor", 0) > 0:
                raise LlamaModelError(f"rope_scaling of type {rope_type!r} needs a factor > 0")
        extra_head_dim = self.extra.get("head_dim")
        if extra_head_dim is not None and extra_head_dim != self.head_dim:
            raise LlamaModelError(
                f"head_dim {extra_head_dim} != hidden_size / num_attention_heads ({self.head_dim}) is not supported"
            )
        for key in ("attention_bias", "mlp_bias"):
            if self.extra.get(key):
                raise LlamaModelError(f"{key}=true is not supported (LLaMA has no biases)")
        if self.extra.get("hidden_act", "silu") != "silu":
            raise LlamaModelError(
                f"hidden_act {self.extra['hidden_act']!r} is not supported (only silu)"
            )

    # ---------------------------------------------------------------------------------- JSON I/O
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LlamaConfig:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        # Newer transformers write rope settings as "rope_parameters"; read both spellings.
        rope = extra.pop("rope_parameters", None)
        if isinstance(rope, dict):
            known.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
            if rope.get("rope_type", "default") != "default":
                known.setdefault(
                    "rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"}
                )
        try:
            return cls(**known, extra=extra)
        except TypeError as exc:
            raise LlamaModelError(f"bad config: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(_PASSTHROUGH_DEFAULTS)
        out.update(self.extra)
        out.update(
            {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        )
        out["head_dim"] = self.head_dim
        out.setdefault("architectures", ["LlamaForCausalLM"])
        return out

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> LlamaConfig:
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise LlamaModelError(f"no config file at {path}") from None
        except json.JSONDecodeError as exc:
            raise LlamaModelError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise LlamaModelError(f"{path} must hold a JSON object")
        return cls.from_dict(data)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` (or ``path`` if it is a file name) atomically."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        from llama_ckpt.atomic import write_atomic

        write_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def replace(self, **changes: Any) -> LlamaConfig:
        return dataclasses.replace(self, **changes)


def _preset(**kw: Any) -> dict[str, Any]:
    return kw


# Shapes of the published models (their config.json), plus small sizes for tests and benchmarks.
PRESETS: dict[str, dict[str, Any]] = {
    # Small enough for 8-process CPU tests: 4 layers split over 2 stages, GQA, vocab divisible by 2 and 4.
    "tiny": _preset(
        vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-6, initializer_range=0.02,
    ),
    # The benchmark configuration "T".
    "bench-t": _preset(
        vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024, rms_norm_eps=1e-6,
    ),
    "llama2-7b": _preset(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
    ),
    "llama2-13b": _preset(
        vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
        num_attention_heads=40, num_key_value_heads=40, max_position_embeddings=4096, rms_norm_eps=1e-5,
    ),
    "llama3-8b": _preset(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001,
    ),
}  # fmt: skip


def preset(name: str, **overrides: Any) -> LlamaConfig:
    """A named configuration (``PRESETS``), with any field overridden."""
    if name not in PRESETS:
        raise LlamaModelError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return LlamaConfig(**{**PRESETS[name], **overrides})

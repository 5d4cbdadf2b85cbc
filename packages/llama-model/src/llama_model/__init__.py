"""A LLaMA decoder on PaddlePaddle with a declarative dp/mp/pp auto-parallel plan."""

from llama_ckpt import state_dict_from_hf, state_dict_to_hf  # the hf <-> paddle names' one owner
from llama_model import kernels
from llama_model.config import PRESETS, LlamaConfig, preset
from llama_model.errors import LlamaModelError
from llama_model.host_reads import count_host_reads
from llama_model.kernels import backend as kernel_backend
from llama_model.loss import IGNORE_INDEX, causal_lm_loss, count_valid_tokens, token_loss_sum
from llama_model.model import LlamaForCausalLM
from llama_model.parallel import ParallelModel, check_backend_support, read_floats
from llama_model.static import check_static_supported
from llama_model.strategy import Strategy
from llama_model.version import __version__

__all__ = [
    "IGNORE_INDEX",
    "PRESETS",
    "LlamaConfig",
    "LlamaForCausalLM",
    "LlamaModelError",
    "ParallelModel",
    "Strategy",
    "__version__",
    "causal_lm_loss",
    "check_backend_support",
    "check_static_supported",
    "count_host_reads",
    "count_valid_tokens",
    "kernel_backend",
    "kernels",
    "preset",
    "read_floats",
    "state_dict_from_hf",
    "state_dict_to_hf",
    "token_loss_sum",
]

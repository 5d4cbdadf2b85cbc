"""A LLaMA decoder on PaddlePaddle with a declarative dp/mp/pp auto-parallel plan.

Importing the package loads neither Paddle nor the parallel stack: the configuration, the strategy
and the errors are plain Python, and every Paddle-backed name (the model, ``ParallelModel``, the
kernels, ...) loads its own module on first use, so ``from llama_model import LlamaForCausalLM``
brings the model and not ``parallel``, ``pipeline``, ``static`` or ``paddle_compat``. Importing the
package changes nothing process-wide. The first name that needs Paddle loads it, and when that is
what loads Paddle, ``configure_runtime()``'s CPU settings are applied just before (``_paddle.py``),
as if the application had called it first; when the application loaded Paddle itself, nothing is
applied and one RuntimeWarning says what is lost where it matters (``runtime.before_paddle_import``).
"""

from importlib import import_module

from llama_ckpt import state_dict_from_hf, state_dict_to_hf  # the hf <-> paddle names' one owner
from llama_model.config import PRESETS, LlamaConfig, preset
from llama_model.errors import LlamaModelError
from llama_model.runtime import configure_runtime
from llama_model.strategy import Strategy
from llama_model.version import __version__

# name -> (module, attribute in it; None for the module itself)
_LAZY = {
    "kernels": ("llama_model.kernels", None),
    "kernel_backend": ("llama_model.kernels", "backend"),
    "count_host_reads": ("llama_model.host_reads", "count_host_reads"),
    "IGNORE_INDEX": ("llama_model.loss", "IGNORE_INDEX"),
    "causal_lm_loss": ("llama_model.loss", "causal_lm_loss"),
    "count_valid_tokens": ("llama_model.loss", "count_valid_tokens"),
    "token_loss_sum": ("llama_model.loss", "token_loss_sum"),
    "LlamaForCausalLM": ("llama_model.model", "LlamaForCausalLM"),
    "ParallelModel": ("llama_model.parallel", "ParallelModel"),
    "check_backend_support": ("llama_model.parallel", "check_backend_support"),
    "read_floats": ("llama_model.parallel", "read_floats"),
    "check_static_supported": ("llama_model.static", "check_static_supported"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'llama_model' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = import_module(module)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


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
    "configure_runtime",
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

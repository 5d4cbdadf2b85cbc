"""The one place that imports paddle, so a missing install fails with one readable line.

When this import is what loads Paddle, ``runtime.configure_runtime()``'s settings are applied just
before (MKL's code path, libgomp's spinning, malloc's reuse of freed memory: they must precede
Paddle's loading of its libraries), so a model's speed does not depend on whether the application
called it first; when the application loaded Paddle already, nothing is applied and one warning
says what that costs where it matters (``runtime.before_paddle_import``). What stays here is
scoped: on CPU builds, ``no_strided_views`` (see the end).
"""

import contextlib
import os

from llama_model.runtime import before_paddle_import

before_paddle_import("llama_model")
try:
    import paddle
except ImportError as exc:  # exercised by tests/test_import.py
    raise ImportError(
        "llama-model needs PaddlePaddle: `pip install llama-model[cpu]` (CPU) or "
        "`pip install paddlepaddle-gpu==3.3.1 -i https://www.paddlepaddle.org.cn/packages/stable/cu126/` (GPU)"
    ) from exc


# On CPU, Paddle 3.3.1's transpose (and slice) return strided views, and the next op that needs the
# data contiguous (a reshape, a custom kernel) copies it element by element on one thread: in
# config T's training step those copies took more time than all the attention's softmaxes. With
# stride kernels off, transpose writes a contiguous result with its multi-threaded kernel: the step
# went from 1.33 s to 1.05 s (2 cores). Only around the model's own compute (``no_strided_views``):
# Paddle's checkpoint code writes through views, and with the flag off process-wide
# dist.load_merged_state_dict returned garbage for replicated tensors. GPU builds keep the views
# (their strided copies are fast); a user's own FLAGS_use_stride_kernel wins.
_STRIDE_FLAG = "FLAGS_use_stride_kernel"
_DROP_STRIDED_VIEWS = _STRIDE_FLAG not in os.environ and not paddle.is_compiled_with_cuda()


@contextlib.contextmanager
def no_strided_views():
    """Within the block, ops write contiguous results instead of strided views (CPU builds)."""
    if not _DROP_STRIDED_VIEWS:
        yield
        return
    before = paddle.get_flags([_STRIDE_FLAG])
    paddle.set_flags({_STRIDE_FLAG: False})
    try:
        yield
    finally:
        paddle.set_flags(before)


__all__ = ["no_strided_views", "paddle"]

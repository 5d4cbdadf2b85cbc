"""Per call: may the compiled kernels take these tensors, or must the fallback? (None = fused.)"""

from __future__ import annotations

from llama_ops._library import LIB
from llama_ops._paddle import paddle

_KERNEL_DTYPES = (paddle.float32, paddle.float64, paddle.float16, paddle.bfloat16)


def _in_pir_graph() -> bool:
    return paddle.framework.in_pir_mode()


def _device(t) -> str:
    # A graph value has no place of its own: it runs on the current device.
    return (paddle.get_device() if _in_pir_graph() else str(t.place)).lower()


def _is_cpu(device: str) -> bool:
    return device.startswith(("cpu", "place(cpu"))


def on_cpu(t) -> bool:
    return _is_cpu(_device(t))


def _unsupported_place(t) -> str | None:
    device = _device(t)
    if _is_cpu(device):
        return None
    if device.startswith("gpu") or device.startswith("place(gpu"):
        return None if LIB.cuda else "GPU tensor and the library has no CUDA kernels"
    return f"no kernels for {device}"


# Host-side logic: dynamic-to-static must call it as Python, not rewrite its loops into graph
# control flow (it did, and broke on the rewritten loop variable).
@paddle.jit.not_to_static
def why_fallback(*tensors) -> str | None:
    """The reason these inputs go to the fallback, or None when the fused kernels take them.

    It runs before every kernel call, so the common case (eager CPU tensors) reads each property
    once and asks the place in C++ (``is_cpu_place()``, not ``str(place)``): a decode step calls the
    kernels tens of times on a few kilobytes each, where slower checks cost more than the kernels.
    """
    if not LIB.loaded:
        return LIB.reason
    eager = paddle.in_dynamic_mode()
    if not eager and not _in_pir_graph():
        return "legacy (non-PIR) static graph"
    # Eager dist tensors go through local_map (the caller checks the placement rule, _local.py);
    # local_map has no static-graph form, and a custom operator declares no SPMD rule, so inside a
    # dist.to_static program a dist value would be treated as a local one.
    if not eager:
        for t in tensors:
            if t.is_dist():
                return "dist tensor in a compiled program (local_map is eager-only)"
    first = tensors[0]
    dtype = first.dtype
    if dtype not in _KERNEL_DTYPES:
        return f"dtype {dtype}"
    for t in tensors[1:]:
        if t.dtype != dtype:
            return "inputs of different dtypes"
    if eager and first.place.is_cpu_place():
        return None
    return _unsupported_place(first)

"""Tensors and layers: a dist tensor's local shard and one made from local shards, a layer's
parameter and buffer slots, storage handed from one tensor to another. Verified for Paddle 3.3."""

from __future__ import annotations

VERIFIED_FOR = ("3.3",)


def local_value(tensor):
    """This rank's shard of a dist tensor; any other tensor as it is."""
    return tensor._local_value() if tensor.is_dist() else tensor


def dist_from_local(local, mesh, placements):
    """The dist tensor on ``mesh`` with ``placements`` whose shard on this rank is ``local``
    (nothing is communicated: every rank passes its own shard)."""
    from paddle.distributed.auto_parallel.api import dtensor_from_local

    return dtensor_from_local(local, mesh, placements)


def replace_parameters(layer, place) -> None:
    """Replace each parameter held directly by ``layer`` with ``place(param)`` (or keep it when
    that returns None), under the same attribute: the slot, so the layer's code is untouched."""
    for key, param in list(layer._parameters.items()):
        placed = None if param is None else place(param)
        if placed is not None:
            layer._parameters[key] = placed


def replace_buffers(layer, place) -> None:
    """As :func:`replace_parameters`, for buffers. Writing the slot keeps the buffer's persistable
    flag (``register_buffer`` would reset it)."""
    for key, buf in list(layer._buffers.items()):
        placed = None if buf is None else place(buf)
        if placed is not None:
            layer._buffers[key] = placed


def give_storage(param, value) -> None:
    """``param`` (a lazily built parameter that has no storage yet) takes ``value``'s, as Paddle's
    own initializers hand a parameter its first storage."""
    value._share_underline_tensor_to(param)


def share_data(dst, src) -> None:
    """Make the dense tensor ``dst`` use ``src``'s storage (both ``Tensor.get_tensor()``)."""
    dst._share_data_with(src)

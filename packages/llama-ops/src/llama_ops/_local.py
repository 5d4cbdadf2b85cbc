"""Dist tensors through the compiled kernels: every rank runs the kernel on its own shard.

Each operator has a placement rule: which shardings of its inputs leave every output element
computable from one rank's shard alone (rms_norm: any axis but the hidden one; rope: batch and
heads; swiglu: any axis of equally placed gate and up; causal_softmax: any axis but the two score
axes). A call that passes its rule runs under ``paddle.distributed.local_map`` (local shards in,
outputs labelled with the input's placements; backward through the same kernels); one that does not
gets the reason, and the caller takes the fallback.

Why local_map rather than SPMD rules compiled into the custom operators (``SetInferSpmdFn``): the
rules above are a few lines of Python over placements, the same for CPU and CUDA builds, and they
need none of Paddle's C++ distributed headers (which the custom-operator build does not ship a
stable ABI for); local_map is Paddle's public API for exactly this. The cost: it exists in dynamic
mode only, so inside ``dist.to_static`` programs dist values take the fallback (see __init__).

Outputs are labelled as Paddle's own SPMD rules would label them: a tensor axis of size one is never
split, even where the input says ``Shard`` over a mesh axis of size one (a batch of one under dp1).
Paddle's broadcasting rules (elementwise, expand, matmul) map such an axis to no mesh axis, so a
kernel output that kept the input's ``Shard`` met a Paddle tensor placed ``Replicate`` on the same
axis, and matmul's backward rule refused the pair ("verify error") in every layout with dp 1 and a
micro-batch of one.

One correction local_map does not make: a weight shared by every shard (rms_norm's) gets, on each
rank, the gradient of that rank's rows only, and local_map would label it ``Replicate()`` — each
rank's part taken for the whole, silently wrong. ``_SumGradOver`` labels it a partial sum over the
mesh axes the input is split on, so Paddle sums it as it does for its own operators' weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from llama_ops._paddle import paddle

dist = paddle.distributed


class _SumGradOver(paddle.autograd.PyLayer):
    """Identity forward; backward labels the gradient a partial sum over the given mesh axes."""

    @staticmethod
    def forward(ctx, weight, mesh_axes):
        ctx.mesh_axes = mesh_axes
        return weight.clone()

    @staticmethod
    def backward(ctx, grad):
        placements = [
            dist.Partial() if axis in ctx.mesh_axes else placement
            for axis, placement in enumerate(grad.placements)
        ]
        return dist.auto_parallel.api.dtensor_from_local(
            grad._local_value(), grad.process_mesh, placements
        )


@dataclass(frozen=True)
class LocalCall:
    """A checked call: run ``kernel`` on the local shards of ``tensors``."""

    tensors: tuple
    out_placements: list
    mesh: object
    # index of a weight input -> the mesh axes its local gradient must be summed over
    sum_grads: dict

    def run(self, kernel):
        tensors = list(self.tensors)
        for index, axes in self.sum_grads.items():
            if axes and not tensors[index].stop_gradient:
                tensors[index] = _SumGradOver.apply(tensors[index], axes)
        # Paddle 3.3.1's local_map needs in_placements (None raises UnboundLocalError); dense inputs
        # (None) pass through whole.
        in_placements = [t.placements if t.is_dist() else None for t in tensors]
        return dist.local_map(
            kernel,
            out_placements=self.out_placements,
            in_placements=in_placements,
            process_mesh=self.mesh,
        )(*tensors)


def _output_placements(t) -> list:
    """``t``'s placements with a split of a size-one axis over a size-one mesh axis (the same
    data on that rank either way) written ``Replicate()``, as Paddle's rules write it."""
    mesh_shape = t.process_mesh.shape
    return [
        dist.Replicate()
        if p.is_shard() and mesh_shape[axis] == 1 and t.shape[p.get_dim() % t.ndim] == 1
        else p
        for axis, p in enumerate(t.placements)
    ]


def _sharded_axes(t) -> dict[int, int]:
    """mesh axis -> tensor axis (non-negative) for each Shard placement of a dist tensor."""
    if not t.is_dist():
        return {}
    return {axis: p.get_dim() % t.ndim for axis, p in enumerate(t.placements) if p.is_shard()}


def _common_checks(tensors):
    """The mesh all dist inputs share, or a reason. A dense input must be one that gets no gradient
    (a rope table): a dense weight used by sharded rows would get only this rank's part."""
    mesh = None
    for t in tensors:
        if not t.is_dist():
            if not t.stop_gradient:
                return None, "a dense input that needs a gradient beside dist tensors"
            continue
        if any(p.is_partial() for p in t.placements):
            return None, "partial-sum input"
        if mesh is None:
            mesh = t.process_mesh
        elif t.process_mesh != mesh:
            return None, "inputs on different process meshes"
    return mesh, None


def rms_norm(x, weight) -> LocalCall | str:
    mesh, reason = _common_checks((x, weight))
    if reason:
        return reason
    x_axes = _sharded_axes(x)
    if x.ndim - 1 in x_axes.values():
        return "hidden axis sharded"
    if _sharded_axes(weight):
        return "weight sharded"
    return LocalCall((x, weight), [_output_placements(x)], mesh, {1: tuple(x_axes)})


def apply_rope(q, k, cos, sin) -> LocalCall | str:
    mesh, reason = _common_checks((q, k, cos, sin))
    if reason:
        return reason
    q_axes, k_axes = _sharded_axes(q), _sharded_axes(k)
    for axes in (q_axes, k_axes):
        if 1 in axes.values():
            return "sequence axis sharded"
        if 3 in axes.values():
            return "head_dim axis sharded"
    q_batch = {axis for axis, dim in q_axes.items() if dim == 0}
    if q_batch != {axis for axis, dim in k_axes.items() if dim == 0}:
        return "q and k split differently over the batch"
    if _sharded_axes(cos) or _sharded_axes(sin):
        return "rope tables sharded"
    if q_batch and cos.ndim >= 3 and cos.shape[0] != 1:
        return "per-sample rope tables with a sharded batch"
    outs = [_output_placements(q), _output_placements(k)]
    return LocalCall((q, k, cos, sin), outs, mesh, {})


def swiglu(gate, up=None) -> LocalCall | str:
    tensors = (gate,) if up is None else (gate, up)
    mesh, reason = _common_checks(tensors)
    if reason:
        return reason
    if up is None:
        if gate.ndim - 1 in _sharded_axes(gate).values():
            return "packed [gate | up] axis sharded"
    elif not (gate.is_dist() and up.is_dist() and gate.placements == up.placements):
        return "gate and up placed differently"
    return LocalCall(tensors, [_output_placements(gate)], mesh, {})


def causal_softmax(scores) -> LocalCall | str:
    mesh, reason = _common_checks((scores,))
    if reason:
        return reason
    if {scores.ndim - 2, scores.ndim - 1} & set(_sharded_axes(scores).values()):
        return "a score axis sharded"
    return LocalCall((scores,), [_output_placements(scores)], mesh, {})

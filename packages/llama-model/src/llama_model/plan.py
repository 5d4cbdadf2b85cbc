"""The tensor-parallel plan: which placement each parameter takes on a stage's ``[dp, mp]`` mesh.

This is the one module that knows about Shard / Replicate. Patterns are matched against full-model
parameter names (``fnmatch`` syntax); the first match wins. Weights are ``[in, out]``:

* q/k/v and gate/up are column-parallel: ``Shard(1)`` splits the output features (heads, MLP width)
* o and down are row-parallel: ``Shard(0)`` splits the input features; their outputs are Partial on mp
  and are summed (all-reduce) where the residual stream needs the full value
* the LM head is vocabulary-parallel (column ``Shard(1)``), the logits stay split over the vocabulary
* the embedding and the norms are replicated. Sharding the embedding on the hidden dimension would
  make the residual add need Partial→Shard (reduce-scatter), which Paddle's CPU build lacks.

Along dp every parameter is replicated (data parallelism; gradients are all-reduced by Paddle).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from llama_model._paddle import paddle
from llama_model.errors import LlamaModelError
from llama_model.paddle_compat import tensors

dist = paddle.distributed

COLWISE, ROWWISE, REPLICATE = "colwise", "rowwise", "replicate"

TENSOR_PARALLEL_PLAN: tuple[tuple[str, str], ...] = (
    ("llama.embed_tokens.weight", REPLICATE),
    ("llama.layers.*.self_attn.q_proj.weight", COLWISE),
    ("llama.layers.*.self_attn.k_proj.weight", COLWISE),
    ("llama.layers.*.self_attn.v_proj.weight", COLWISE),
    ("llama.layers.*.self_attn.o_proj.weight", ROWWISE),
    ("llama.layers.*.mlp.gate_proj.weight", COLWISE),
    ("llama.layers.*.mlp.up_proj.weight", COLWISE),
    ("llama.layers.*.mlp.down_proj.weight", ROWWISE),
    ("lm_head.weight", COLWISE),
    ("*norm.weight", REPLICATE),
)


def style_of(name: str) -> str:
    for pattern, style in TENSOR_PARALLEL_PLAN:
        if fnmatchcase(name, pattern):
            return style
    raise KeyError(f"no tensor-parallel plan entry matches parameter {name!r}")


def mp_placement(name: str):
    style = style_of(name)
    if style == COLWISE:
        return dist.Shard(1)
    if style == ROWWISE:
        return dist.Shard(0)
    return dist.Replicate()


def placements(name: str, mesh_dims) -> list:
    """Placements of parameter ``name`` on a mesh with dims ``mesh_dims`` (a subset of pp/dp/mp)."""
    return [mp_placement(name) if dim == "mp" else dist.Replicate() for dim in mesh_dims]


def data_placements(mesh_dims) -> list:
    """Token batches [b, s]: split over dp, whole on mp."""
    return [dist.Shard(0) if dim == "dp" else dist.Replicate() for dim in mesh_dims]


def apply_plan(module, mesh) -> None:
    """Turn every parameter of ``module`` (a whole model or a stage) into a dist tensor on ``mesh``,
    placed by the plan, and replicate its buffers there. Parameter names do not change."""
    names = {id(p): n for n, p in module.named_parameters()}
    replicated = [dist.Replicate()] * len(mesh.dim_names)

    def place_param(param):
        if param.is_dist():
            return None
        return dist.shard_tensor(param, mesh, placements(names[id(param)], mesh.dim_names))

    def place_buffer(buf):
        return None if buf.is_dist() else dist.shard_tensor(buf, mesh, replicated)

    for layer in module.sublayers(include_self=True):
        tensors.replace_parameters(layer, place_param)
        tensors.replace_buffers(layer, place_buffer)


def _activation_placements(mesh_dims, sequence_split: bool) -> list:
    """Hidden states [b, s, h]: batch split over dp; over mp either whole or split on the sequence."""
    out = []
    for dim in mesh_dims:
        if dim == "dp":
            out.append(dist.Shard(0))
        elif dim == "mp" and sequence_split:
            out.append(dist.Shard(1))
        else:
            out.append(dist.Replicate())
    return out


def apply_sequence_parallel(module, mesh) -> None:
    """Sequence parallelism (GPU only): outside attention and the MLP — norms, residual adds — hidden
    states stay split over the sequence on mp. Entering attention/MLP they are all-gathered; the
    row-parallel outputs (Partial on mp) are reduce-scattered back to the sequence split."""
    dims = mesh.dim_names
    split = _activation_placements(dims, sequence_split=True)
    whole = _activation_placements(dims, sequence_split=False)

    def gather_input(layer, inputs):
        return (dist.reshard(inputs[0], mesh, whole), *inputs[1:])

    def scatter_output(layer, inputs, output):
        return dist.reshard(output, mesh, split)

    llama = module.llama
    if llama.embed_tokens is not None:
        llama.embed_tokens.register_forward_post_hook(scatter_output)
    for layer in llama.layers.values():
        for block in (layer.self_attn, layer.mlp):
            block.register_forward_pre_hook(gather_input)
            block.register_forward_post_hook(scatter_output)
    if module.lm_head is not None:
        module.lm_head.register_forward_pre_hook(gather_input)


RECOMPUTE_CHOICES = (None, "full", "attention")


def check_recompute(granularity: str | None) -> None:
    if granularity not in RECOMPUTE_CHOICES:
        raise LlamaModelError(f"recompute must be one of {RECOMPUTE_CHOICES}, got {granularity!r}")


def apply_recompute(module, granularity: str | None) -> None:
    """Recompute activations in the backward instead of keeping them, applied from outside the
    model: ``"full"`` wraps each decoder layer's forward, ``"attention"`` its attention block (the
    norm and attention). Only while training; evaluation runs the plain forward. A compiled step
    turns the compiler's recompute pass on for such a module (``recompute_granularity``)."""
    check_recompute(granularity)
    if granularity is None:
        return
    from paddle.distributed.fleet.utils import recompute

    name = "forward" if granularity == "full" else "attention_block"
    for layer in module.llama.layers.values():
        plain = getattr(layer, name)

        def checkpointed(*args, _plain=plain, _layer=layer):
            if not _layer.training:
                return _plain(*args)
            return recompute(_plain, *args, use_reentrant=False)

        setattr(layer, name, checkpointed)  # an instance attribute: this layer only
    module.recompute_granularity = granularity


def recompute_granularity(module) -> str | None:
    return getattr(module, "recompute_granularity", None)

"""Save a LLaMA-shaped fp32 checkpoint (about 1.5 GB) from 8 ranks, dp2 x mp2 x pp2.

usage: python -m paddle.distributed.launch --nproc_per_node 8 _save_big_checkpoint.py OUT
Each rank builds only its own pieces (values from their global indices, no global tensor in memory)
and wraps them with dtensor_from_local on its stage's [dp, mp] sub-mesh.
"""

import sys

import numpy as np
import paddle
import paddle.distributed as dist
from paddle.distributed.auto_parallel.api import dtensor_from_local

V, H, FF, L = 32000, 1024, 2816, 24
out = sys.argv[1]
dist.init_parallel_env()
rank = dist.get_rank()
pp, dp, mp = 2, 2, 2
mesh = dist.ProcessMesh(np.arange(8).reshape(pp, dp, mp).tolist(), dim_names=["pp", "dp", "mp"])
stage = int(np.argwhere(np.array(mesh.mesh) == rank)[0][0])
sub = mesh.get_mesh_with_dim("pp", stage)
mp_rank = sub.get_rank_by_dim_and_process_id("mp", rank)

shapes = {"llama.embed_tokens.weight": ((V, H), None)}
for i in range(L):
    p = f"llama.layers.{i}."
    for k in ("q_proj", "k_proj", "v_proj"):
        shapes[p + f"self_attn.{k}.weight"] = ((H, H), 1)
    shapes[p + "self_attn.o_proj.weight"] = ((H, H), 0)
    shapes[p + "mlp.gate_proj.weight"] = ((H, FF), 1)
    shapes[p + "mlp.up_proj.weight"] = ((H, FF), 1)
    shapes[p + "mlp.down_proj.weight"] = ((FF, H), 0)
    shapes[p + "input_layernorm.weight"] = ((H,), None)
    shapes[p + "post_attention_layernorm.weight"] = ((H,), None)
shapes["llama.norm.weight"] = ((H,), None)
shapes["lm_head.weight"] = ((H, V), 1)


def stage_of(name):
    if name.startswith("llama.embed_tokens"):
        return 0
    if name.startswith("llama.layers."):
        return int(name.split(".")[2]) * pp // L
    return pp - 1


sd = {}
for k, (name, (shape, axis)) in enumerate(shapes.items()):
    if stage_of(name) != stage:
        continue
    local = list(shape)
    start = [0] * len(shape)
    if axis is not None:
        local[axis] //= mp
        start[axis] = mp_rank * local[axis]
    grids = np.meshgrid(
        *[np.arange(s, s + n, dtype=np.float32) for s, n in zip(start, local)],
        indexing="ij",
        sparse=True,
    )
    value = (sum(g * (j + 1) for j, g in enumerate(grids)) + k).astype(np.float32) * 1e-4
    placement = dist.Shard(axis) if axis is not None else dist.Replicate()
    sd[name] = dtensor_from_local(paddle.to_tensor(value), sub, [dist.Replicate(), placement])
dist.save_state_dict({"model": sd}, out)
dist.barrier()

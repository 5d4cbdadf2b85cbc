"""Save the tiny state dict of tiny_model.py with dist.save_state_dict under a given layout.

usage: python -m paddle.distributed.launch --nproc_per_node N dist_save.py OUT {dp2mp2pp2|mp4}

dp2mp2pp2 (8 ranks): mesh [pp, dp, mp]; each rank holds only its stage's parameters, on the
stage's [dp, mp] sub-mesh. Then a second save (unique id 1) of the model with doubled values.
mp4 (4 ranks): mesh [mp]; also saved a second time with safetensors=True into OUT-safetensors.
bf16 tensors cannot be sliced by Paddle's CPU reshard, so each rank builds its own bf16 piece and
wraps it with dtensor_from_local; one bf16 tensor is a plain dense tensor (replicated everywhere).
"""

import sys

import numpy as np
import paddle
import paddle.distributed as dist
import tiny_model as T
from paddle.distributed.auto_parallel.api import dtensor_from_local
from paddle.distributed.flex_checkpoint.dcp.sharded_weight import ShardedWeight

out, layout = sys.argv[1], sys.argv[2]
dist.init_parallel_env()
rank, world = dist.get_rank(), dist.get_world_size()
R, S = dist.Replicate(), dist.Shard
MP = {"col": S(1), "row": S(0), "rep": R}

if layout == "dp2mp2pp2":
    pp, dp, mp = 2, 2, 2
    mesh = dist.ProcessMesh(
        np.arange(world).reshape(pp, dp, mp).tolist(), dim_names=["pp", "dp", "mp"]
    )
    stage = int(np.argwhere(np.array(mesh.mesh) == rank)[0][0])
    sub = mesh.get_mesh_with_dim("pp", stage)  # [dp, mp]
else:
    pp, mp, stage = 1, 4, 0
    sub = dist.ProcessMesh(list(range(world)), dim_names=["mp"])
mp_rank = sub.get_rank_by_dim_and_process_id("mp", rank)


def place(array, kind, dp_kind=None):
    """Placements on the sub-mesh: dp axis (if any) then mp."""
    mp_pl = MP[kind]
    pls = ([dp_kind or R] if pp > 1 else []) + [mp_pl]
    return dist.shard_tensor(paddle.to_tensor(array), sub, pls)


def local_piece(array, kind):
    if kind == "rep":
        return array
    axis = 1 if kind == "col" else 0
    return np.split(array, mp, axis=axis)[mp_rank]


def build(scale):
    model = {}
    for name, value in T.model_values(scale).items():
        if T.stage_of(name, pp) == stage:
            model[name] = place(value, T.params()[name][1])
    return model


model = build(1.0)
extra = {}
for name, (value, dtype, kind) in T.extra_values().items():
    if dtype == "bfloat16":
        if kind == "dense":
            extra[name] = paddle.to_tensor(value).astype("bfloat16")
        elif stage == 0:
            local = paddle.to_tensor(local_piece(value, kind)).astype("bfloat16")
            pls = ([R] if pp > 1 else []) + [MP[kind]]
            extra[name] = dtensor_from_local(local, sub, pls)
    elif stage == pp - 1:
        extra[name] = place(value, kind)
optimizer = {}
for name, value in T.optimizer_values().items():
    if T.stage_of(name, pp) == stage:
        kind = T.params()[name.replace("_moment1_0", "")][1]
        # the dp axis splits the other tensor dim ([Shard(0), Shard(0)] breaks Paddle's save)
        optimizer[name] = place(value, kind, S(0) if kind == "col" else S(1))
# a flattened state (sharding-stage-1 style): rank r holds elements [8r, 8r + 8) of an 8x8 tensor
flat = np.arange(64, dtype=np.float32).reshape(8, 8) / 7
if world == 8:
    optimizer["flat_state"] = ShardedWeight(
        key="optimizer.flat_state",
        local_tensor=paddle.to_tensor(flat.reshape(-1)[8 * rank : 8 * rank + 8]),
        local_shape=(8, 8),
        global_shape=(8, 8),
        global_offset=(0, 0),
        is_flattened=True,
        flattened_range=slice(8 * rank, 8 * rank + 8),
    )

dist.save_state_dict({"model": model, "extra": extra, "optimizer": optimizer}, out, unique_id=0)
if layout == "dp2mp2pp2":
    dist.save_state_dict({"model": build(2.0)}, out, unique_id=1)
else:
    dist.save_state_dict({"model": model}, out + "-safetensors", safetensors=True)
dist.barrier()

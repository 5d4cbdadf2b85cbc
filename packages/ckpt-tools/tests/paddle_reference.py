"""Paddle's own answer, run in a separate process: load_merged_state_dict and paddle.load.

usage: python paddle_reference.py CKPT OUT.npz [OURS.pdparams]
Writes OUT.npz with each merged tensor's raw bits (bf16 as uint16) and, if given, OURS.pdparams as
paddle.load reads it (keys prefixed "ours/"); prints {key: dtype} of both as JSON on the last line.
"""

import json
import sys

import numpy as np
import paddle
import paddle.distributed as dist


def bits(t):
    return np.ascontiguousarray(t.numpy())  # paddle hands bf16 to numpy as uint16 bits


ckpt, out = sys.argv[1], sys.argv[2]
merged = dist.load_merged_state_dict(ckpt)
arrays = {f"ref/{k}": bits(v) for k, v in merged.items()}
dtypes = {"ref": {k: str(v.dtype).split(".")[-1] for k, v in merged.items()}}
if len(sys.argv) > 3:
    ours = paddle.load(sys.argv[3])
    arrays.update({f"ours/{k}": bits(v) for k, v in ours.items()})
    dtypes["ours"] = {k: str(v.dtype).split(".")[-1] for k, v in ours.items()}
np.savez(out, **arrays)
print(json.dumps(dtypes))

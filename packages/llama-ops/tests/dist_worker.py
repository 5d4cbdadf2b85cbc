"""Run by test_dist.py under paddle.distributed.launch (2 processes, gloo): each operation on sharded
dist tensors must give what the fallback gives on the dense tensors (outputs and gradients), and
report which path it took (llama_ops.usage(), reset per case)."""

import json
import sys

import numpy as np
import paddle
import paddle.distributed as dist

import llama_ops


def _dense(a):
    t = paddle.to_tensor(a)
    t.stop_gradient = False
    return t


def _sharded(a, mesh, placement):
    placements = list(placement) if isinstance(placement, tuple) else [placement]
    t = dist.shard_tensor(paddle.to_tensor(a), mesh, placements)
    t.stop_gradient = False
    return t


def _full(t):
    if not t.is_dist():
        return t.numpy()
    return dist.reshard(t, t.process_mesh, [dist.Replicate()] * len(t.placements)).numpy()


def _run(inputs, fn, probes):
    outs = fn(*inputs)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    loss = sum((o * p).sum() for o, p in zip(outs, probes))
    grads = paddle.grad([loss], [t for t in inputs if not t.stop_gradient])
    return [_full(t) for t in outs + list(grads)]


def _rope_then_scores(q, k, cos, sin, rope):
    """Rotary embedding, then the attention scores as the model forms them from Paddle operators
    (heads first, each key head repeated for its query heads, q kᵀ)."""
    q, k = rope(q, k, cos, sin)
    b, s, hq, d = q.shape
    hk = k.shape[2]
    q, k = q.transpose([0, 2, 1, 3]), k.transpose([0, 2, 1, 3])
    k = k.unsqueeze(2).expand([b, hk, hq // hk, s, d]).reshape([b, hq, s, d])
    return paddle.matmul(q, k, transpose_y=True)


def main(out_path):
    dist.init_parallel_env()
    mesh = dist.ProcessMesh([0, 1], dim_names=["mp"])
    # a dp axis of size one beside mp2, as in an mp-only job
    dp1_mp2 = dist.ProcessMesh([[0, 1]], dim_names=["dp", "mp"])
    rng = np.random.default_rng(0)  # same numbers on both ranks
    b, s, hq, hk, d, h, inner = 2, 6, 4, 2, 16, 24, 20
    scores = rng.normal(size=(b, hq, s, s))
    q, k = rng.normal(size=(b, s, hq, d)), rng.normal(size=(b, s, hk, d))
    cos, sin = rng.normal(size=(s, d)), rng.normal(size=(s, d))
    x, w = rng.normal(size=(b * s, h)), rng.normal(size=h)
    gate, up = rng.normal(size=(b * s, inner)), rng.normal(size=(b * s, inner))
    q1, k1 = rng.normal(size=(1, s, hq, d)), rng.normal(size=(1, s, hk, d))  # a batch of one
    f32 = [a.astype("float32") for a in (q, k, cos, sin, x, w, gate, up, scores, q1, k1)]
    q, k, cos, sin, x, w, gate, up, scores, q1, k1 = f32
    split_batch_heads = (dist.Shard(0), dist.Shard(2))  # batch over dp (size one), heads over mp
    whole = (dist.Replicate(), dist.Replicate())
    # name: (function, [(input, placement)], output probes, inputs without gradient)
    cases = {
        # heads split over mp, as q/k come out of column-parallel projections
        "rope": (
            lambda t: llama_ops.apply_rope(*t),
            [
                (q, dist.Shard(2)),
                (k, dist.Shard(2)),
                (cos, dist.Replicate()),
                (sin, dist.Replicate()),
            ],
            [rng.normal(size=q.shape), rng.normal(size=k.shape)],
            {2, 3},
        ),
        # rows split (dp, or the sequence under sequence parallelism): the weight's gradient is
        # the sum of every rank's part
        "rms_norm": (
            lambda t: llama_ops.rms_norm(t[0], t[1], 1e-6),
            [(x, dist.Shard(0)), (w, dist.Replicate())],
            [rng.normal(size=x.shape)],
            set(),
        ),
        # the hidden axis split: no rank can normalise its part alone, so the fallback
        "rms_norm_hidden_split": (
            lambda t: llama_ops.rms_norm(t[0], t[1], 1e-6),
            [(x, dist.Shard(1)), (w, dist.Shard(0))],
            [rng.normal(size=x.shape)],
            set(),
        ),
        "swiglu": (
            lambda t: llama_ops.swiglu(*t),
            [(gate, dist.Shard(1)), (up, dist.Shard(1))],
            [rng.normal(size=gate.shape)],
            set(),
        ),
        "causal_softmax": (
            lambda t: llama_ops.causal_softmax(t[0], d**-0.5),
            [(scores, dist.Shard(1))],
            [rng.normal(size=scores.shape)],
            set(),
        ),
        # A batch of one split over a dp axis of size one: the kernel's outputs must be placed as
        # Paddle's own operators place them, or the backward of the matmul that meets them refuses
        # the pair (mp-only training at micro-batch 1 died there).
        "rope_batch_of_one": (
            lambda t: _rope_then_scores(*t, llama_ops.apply_rope),
            [(q1, split_batch_heads), (k1, split_batch_heads), (cos, whole), (sin, whole)],
            [rng.normal(size=(1, hq, s, s))],
            {2, 3},
        ),
    }
    meshes = {"rope_batch_of_one": dp1_mp2}
    references = {
        "rope": lambda t: llama_ops.fallback.apply_rope(*t),
        "rms_norm": lambda t: llama_ops.fallback.rms_norm(t[0], t[1], 1e-6),
        "swiglu": lambda t: llama_ops.fallback.swiglu(*t),
        "causal_softmax": lambda t: llama_ops.fallback.causal_softmax(t[0], d**-0.5),
    }
    references["rms_norm_hidden_split"] = references["rms_norm"]
    references["rope_batch_of_one"] = lambda t: _rope_then_scores(*t, llama_ops.fallback.apply_rope)
    report = {
        "rank": dist.get_rank(),
        "backend": llama_ops.backend(),
        "max_abs_diff": {},
        "usage": {},
        "reasons": {},
    }
    for name, (fn, spec, probes, frozen) in cases.items():
        probes = [p.astype("float32") for p in probes]
        dense_in = [_dense(a) for a, _ in spec]
        case_mesh = meshes.get(name, mesh)
        sharded_in = [_sharded(a, case_mesh, pl) for a, pl in spec]
        for i in frozen:  # cos/sin: no gradient
            dense_in[i].stop_gradient = sharded_in[i].stop_gradient = True
        ref = references[name]
        want = _run(dense_in, lambda *t, ref=ref: ref(t), [paddle.to_tensor(p) for p in probes])
        llama_ops.reset_usage()
        got = _run(
            sharded_in,
            lambda *t, fn=fn: fn(t),
            [
                dist.shard_tensor(
                    paddle.to_tensor(p), case_mesh, [dist.Replicate()] * len(case_mesh.shape)
                )
                for p in probes
            ],
        )
        report["usage"][name] = llama_ops.usage()
        report["reasons"][name] = llama_ops.fallback_reasons()
        assert all(t.is_dist() for t in sharded_in)
        report["max_abs_diff"][name] = max(float(np.abs(g - e).max()) for g, e in zip(got, want))
    # the labels the batch-of-one rope gives its outputs
    llama_ops.reset_usage()
    placed = [
        _sharded(a, dp1_mp2, pl) for a, pl in ((q1, split_batch_heads), (k1, split_batch_heads))
    ]
    outs = llama_ops.apply_rope(*placed, paddle.to_tensor(cos), paddle.to_tensor(sin))
    report["batch_of_one_placements"] = [str(o.placements) for o in outs]
    with open(f"{out_path}.{dist.get_rank()}.json", "w") as f:
        json.dump(report, f)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])

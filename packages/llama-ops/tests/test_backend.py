"""Backend selection: the compiled library, LLAMA_OPS_DISABLE, a missing library, dist tensors,
static graphs and OpenMP thread counts."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import paddle.distributed as dist
import pytest
from conftest import FALLBACK_REQUESTED

import llama_ops

PACKAGE_DIR = Path(llama_ops.__file__).parent

# A script run in a fresh interpreter: the backend string and every op's output on fixed inputs.
PROBE = """
import json, sys
import numpy as np, paddle, llama_ops
rng = np.random.default_rng(0)
x = paddle.to_tensor(rng.normal(size=(512, 96)).astype("float32"))
w = paddle.to_tensor(rng.normal(size=96).astype("float32"))
q = paddle.to_tensor(rng.normal(size=(4, 64, 4, 32)).astype("float32"))
k = paddle.to_tensor(rng.normal(size=(4, 64, 2, 32)).astype("float32"))
c = paddle.to_tensor(rng.normal(size=(64, 32)).astype("float32"))
for t in (x, w, q, k):
    t.stop_gradient = False
outs = [llama_ops.rms_norm(x, w), *llama_ops.apply_rope(q, k, c, c), llama_ops.swiglu(x, x * 0.5)]
grads = paddle.grad([o.sum() * 1.0 for o in outs], [x, w, q, k])
np.savez(sys.argv[1], *[t.numpy() for t in outs + list(grads)])
print(json.dumps({"backend": llama_ops.backend()}))
"""


def _run_probe(tmp_path, name, env_extra, pythonpath=None):
    env = {**os.environ, **env_extra}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [pythonpath or str(PACKAGE_DIR.parent), env.get("PYTHONPATH")])
    )
    out = tmp_path / f"{name}.npz"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    arrays = np.load(out)
    return info, [arrays[f"arr_{i}"] for i in range(len(arrays.files))], proc.stderr


def test_compiled_kernels_are_loaded():
    if FALLBACK_REQUESTED:
        assert llama_ops.backend().startswith("fallback (LLAMA_OPS_DISABLE=")
    else:
        assert llama_ops.backend() in ("fused (cpu kernels)", "fused (cpu+cuda kernels)"), (
            llama_ops.backend()
        )


@pytest.mark.skipif(FALLBACK_REQUESTED, reason="compares against the fused run")
def test_disable_env_and_thread_counts_give_the_same_numbers(tmp_path):
    """LLAMA_OPS_DISABLE=1 switches to the fallback without a warning; the fused kernels give the
    fallback's numbers with 1 and 2 OpenMP threads (shapes above the parallel threshold)."""
    ref_info, ref, ref_err = _run_probe(
        tmp_path, "off", {"LLAMA_OPS_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    )
    assert ref_info["backend"] == "fallback (LLAMA_OPS_DISABLE=1)"
    assert "pure-Paddle fallback" not in ref_err
    for threads in ("1", "2"):
        info, got, _ = _run_probe(tmp_path, f"t{threads}", {"OMP_NUM_THREADS": threads})
        assert info["backend"].startswith("fused")
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-4 * max(1.0, np.abs(r).max()))


def test_package_without_library_warns_once_and_works(tmp_path):
    copy = tmp_path / "site" / "llama_ops"
    shutil.copytree(
        PACKAGE_DIR,
        copy,
        ignore=shutil.ignore_patterns("*.so", "*.dylib", "_build_info.json", "__pycache__"),
    )
    env = {"LLAMA_OPS_DISABLE": "", "OMP_NUM_THREADS": "1"}
    info, got, err = _run_probe(tmp_path, "nolib", env, pythonpath=str(copy.parent))
    assert info["backend"].startswith("fallback (this install has no compiled kernels")
    ours = [line for line in err.splitlines() if "pure-Paddle fallback" in line]
    assert len(ours) == 1 and "llama-ops uses its pure-Paddle fallback" in ours[0], err
    _, ref, _ = _run_probe(tmp_path, "ref", {"LLAMA_OPS_DISABLE": "1", "OMP_NUM_THREADS": "1"})
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r)


def test_dist_tensors_run_on_local_shards(rng):
    """In one process a one-rank mesh still makes dist tensors: with the library they run the kernels
    on the local shard (counted as "local"), keep their placements and give the dense result; a
    placement a kernel cannot take (hidden axis split for rms_norm) takes the fallback, counted with
    its reason."""
    mesh = dist.ProcessMesh([0], dim_names=["mp"])
    x = rng.normal(size=(4, 6, 2, 8)).astype("float32")
    cos = rng.normal(size=(6, 8)).astype("float32")
    dense = llama_ops.fallback.apply_rope(*(paddle.to_tensor(a) for a in (x, x, cos, cos)))
    q = dist.shard_tensor(paddle.to_tensor(x), mesh, [dist.Shard(2)])
    c = dist.shard_tensor(paddle.to_tensor(cos), mesh, [dist.Replicate()])
    h = dist.shard_tensor(paddle.to_tensor(x), mesh, [dist.Shard(3)])
    w = dist.shard_tensor(paddle.ones([8]), mesh, [dist.Replicate()])
    llama_ops.reset_usage()
    out = llama_ops.apply_rope(q, q, c, c)
    normed = llama_ops.rms_norm(h, w)
    assert out[0].is_dist() and out[0].placements == [dist.Shard(2)]
    assert normed.placements == [dist.Shard(3)]
    np.testing.assert_allclose(out[0].numpy(), dense[0].numpy(), rtol=1e-6, atol=1e-6)
    usage = llama_ops.usage()
    if FALLBACK_REQUESTED:
        assert usage["apply_rope"] == {"fused": 0, "local": 0, "fallback": 1}
    else:
        assert usage["apply_rope"] == {"fused": 0, "local": 1, "fallback": 0}
        assert usage["rms_norm"] == {"fused": 0, "local": 0, "fallback": 1}
        assert llama_ops.fallback_reasons() == {"rms_norm": "hidden axis sharded"}
        assert llama_ops.summary() == (
            "rms_norm fallback (hidden axis sharded), apply_rope fused (local shards), "
            "swiglu not called, causal_softmax not called"
        )


@pytest.mark.skipif(FALLBACK_REQUESTED, reason="with the library off every reason is the switch")
def test_eager_dispatch_reasons():
    """The verdicts of the eager path (every kernel call goes through it): CPU float tensors and
    parameters go to the kernels, and so do eager dist tensors (their placement rules decide next);
    other dtypes and mixed dtypes do not."""
    from llama_ops._dispatch import why_fallback

    x = paddle.ones([4, 8], "float32")
    w = paddle.create_parameter([8], "float32")
    assert why_fallback(x, w) is None
    w64 = paddle.create_parameter([8], "float64")
    assert why_fallback(x.astype("float64"), w64) is None
    assert why_fallback(x, w.astype("float64")) == "inputs of different dtypes"
    assert why_fallback(x.astype("int32")) == "dtype paddle.int32"
    mesh = dist.ProcessMesh([0], dim_names=["mp"])
    shard = dist.shard_tensor(paddle.ones([4, 8], "float32"), mesh, [dist.Replicate()])
    assert why_fallback(x, shard) is None  # eager dist tensors: the placement rules decide


class _Block(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.norm = self.create_parameter([16])
        self.proj = paddle.nn.Linear(16, 2 * 16 + 2 * 16 + 2 * 24)

    def forward(self, x, cos, sin):
        h = llama_ops.rms_norm(x, self.norm, 1e-5)
        q, k, gate_up = paddle.split(self.proj(h), [32, 32, 48], axis=-1)
        q, k = llama_ops.apply_rope(q.reshape([2, 5, 2, 16]), k.reshape([2, 5, 2, 16]), cos, sin)
        scores = paddle.matmul(
            q.transpose([0, 2, 1, 3]), k.transpose([0, 2, 1, 3]), transpose_y=True
        )
        probs = llama_ops.causal_softmax(scores, 0.25)  # [2, 2, 5, 5]
        return (probs * scores).sum() + llama_ops.swiglu(gate_up).sum()


def test_to_static_uses_the_kernels_and_matches_dygraph(rng):
    paddle.seed(0)
    model = _Block()
    x = paddle.to_tensor(rng.normal(size=(2, 5, 16)).astype("float32"))
    cos = paddle.to_tensor(rng.normal(size=(5, 16)).astype("float32"))
    sin = paddle.to_tensor(rng.normal(size=(5, 16)).astype("float32"))
    loss = model(x, cos, sin)
    loss.backward()
    eager_grads = [p.grad.numpy().copy() for p in model.parameters()]
    model.clear_gradients()

    static = paddle.jit.to_static(model, full_graph=True)
    static_loss = static(x, cos, sin)
    static_loss.backward()
    ops = {op.name() for op in static.forward.concrete_program.main_program.global_block().ops}
    fused_ops = {
        "custom_op.fused_rms_norm",
        "custom_op.fused_rope",
        "custom_op.fused_swiglu_packed",
        "custom_op.fused_causal_softmax",
    }
    if FALLBACK_REQUESTED:
        assert not ops & fused_ops
    else:
        assert fused_ops <= ops, ops
    np.testing.assert_allclose(float(static_loss), float(loss), rtol=1e-5)
    for p, g in zip(model.parameters(), eager_grads):
        np.testing.assert_allclose(p.grad.numpy(), g, rtol=1e-4, atol=1e-5)

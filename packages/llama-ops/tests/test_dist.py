"""Sharded dist tensors through llama_ops in two gloo processes: the compiled kernels run on each
rank's shard (counted by llama_ops.usage()) and give the fallback's dense outputs and gradients."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import llama_ops

HERE = Path(__file__).parent


@pytest.mark.dist
def test_sharded_inputs_run_the_kernels_locally_and_match_dense(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(llama_ops.__file__).parent.parent), env.get("PYTHONPATH")])
    )
    out = tmp_path / "report"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "paddle.distributed.launch",
            "--nproc_per_node",
            "2",
            "--log_dir",
            str(tmp_path / "logs"),
            str(HERE / "dist_worker.py"),
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    logs = "".join(p.read_text() for p in sorted((tmp_path / "logs").glob("workerlog.*")))
    assert proc.returncode == 0, logs[-3000:]
    for rank in (0, 1):
        report = json.loads(Path(f"{out}.{rank}.json").read_text())
        assert report["backend"] == llama_ops.backend()
        assert set(report["max_abs_diff"]) == {
            "rope",
            "rms_norm",
            "rms_norm_hidden_split",
            "swiglu",
            "causal_softmax",
            "rope_batch_of_one",
        }
        # Measured: the kernels differ from the fallback by at most 2e-6 on these inputs (float32
        # rounding of a different summation order); the row-split rms_norm weight gradient labelled
        # Replicate instead of a partial sum (the local_map default) is off by about 5.
        for name, diff in report["max_abs_diff"].items():
            assert diff < 1e-5, (rank, name, diff)
        usage = report["usage"]
        if llama_ops.backend().startswith("fused"):
            op_of = {"rope": "apply_rope", "rms_norm": "rms_norm", "swiglu": "swiglu"}
            op_of["causal_softmax"] = "causal_softmax"
            op_of["rope_batch_of_one"] = "apply_rope"
            for case, op in op_of.items():
                assert usage[case][op] == {"fused": 0, "local": 1, "fallback": 0}, (case, usage)
            assert usage["rms_norm_hidden_split"]["rms_norm"] == {
                "fused": 0,
                "local": 0,
                "fallback": 1,
            }
            assert report["reasons"]["rms_norm_hidden_split"] == {"rms_norm": "hidden axis sharded"}
            # the batch of one (size-one axis over the size-one dp axis) labelled as Paddle labels
            # it, the heads still split over mp
            assert report["batch_of_one_placements"] == ["[Replicate(), Shard(dim=2)]"] * 2
        else:
            assert all(u[op]["local"] == 0 for u in usage.values() for op in u)

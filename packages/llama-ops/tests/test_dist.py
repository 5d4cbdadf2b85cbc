"""mp-sharded dist tensors through llama_ops in two gloo processes equal the dense computation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import llama_ops

HERE = Path(__file__).parent


@pytest.mark.dist
def test_mp_sharded_inputs_match_dense(tmp_path):
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
        assert set(report["max_abs_diff"]) == {"rope", "rms_norm", "swiglu"}
        for name, diff in report["max_abs_diff"].items():
            assert diff < 1e-5, (rank, name, diff)

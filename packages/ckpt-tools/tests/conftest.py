"""Fixtures: real checkpoints saved by multi-process Paddle jobs (once per session and layout)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import tiny_model  # noqa: E402


def _launch(out: Path, layout: str, nproc: int, logs: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "paddle.distributed.launch",
        "--nproc_per_node",
        str(nproc),
        "--log_dir",
        str(logs),
        str(HERE / "dist_save.py"),
        str(out),
        layout,
    ]
    try:
        proc = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{layout} save timed out; logs in {logs}")
    if proc.returncode != 0:
        tails = "".join(p.read_text()[-1500:] for p in sorted(logs.glob("workerlog.*"))[:2])
        pytest.fail(f"{layout} save failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{tails}")
    (out / "config.json").write_text(json.dumps(tiny_model.CONFIG))


@pytest.fixture(scope="session")
def ckpt_3d(tmp_path_factory) -> Path:
    """dp2mp2pp2 (8 processes): unique id 0 = model + extra + optimizer, unique id 1 = model x2."""
    root = tmp_path_factory.mktemp("dp2mp2pp2")
    _launch(root / "ckpt", "dp2mp2pp2", 8, root / "log")
    return root / "ckpt"


@pytest.fixture(scope="session")
def ckpt_mp4(tmp_path_factory) -> Path:
    """mp4 (4 processes): model + extra + optimizer; `<dir>-safetensors` holds the model again."""
    root = tmp_path_factory.mktemp("mp4")
    _launch(root / "ckpt", "mp4", 4, root / "log")
    return root / "ckpt"


def only_unique_id(ckpt: Path, uid: int, dest: Path) -> Path:
    """A copy holding one save: Paddle's load_state_dict always reads the newest unique id."""
    dest.mkdir()
    for f in ckpt.iterdir():
        if (
            f.name == f"{uid}.metadata"
            or f.name.endswith(f"_{uid}.distcp")
            or f.name == "config.json"
        ):
            shutil.copy(f, dest / f.name)
    return dest


def paddle_reference(ckpt: Path, out_npz: Path, pdparams: Path | None = None) -> dict:
    """Run tests/paddle_reference.py in a fresh process (Paddle stays out of the test process)."""
    cmd = [sys.executable, str(HERE / "paddle_reference.py"), str(ckpt), str(out_npz)]
    if pdparams is not None:
        cmd.append(str(pdparams))
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "GLOG_minloglevel": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])

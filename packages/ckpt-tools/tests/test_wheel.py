"""The built wheel, installed alone in a fresh venv (no Paddle), merges a real checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli

PACKAGE = Path(__file__).resolve().parents[1]


@pytest.mark.dist
def test_wheel_in_a_venv_without_paddle(ckpt_3d, tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(PACKAGE),
        ],
        check=True,
        timeout=300,
    )
    wheel = next((tmp_path / "dist").glob("llama_ckpt_tools-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=300)
    assert subprocess.run([py, "-c", "import paddle"], capture_output=True).returncode != 0
    out = tmp_path / "wheel.pdparams"
    subprocess.run(
        [venv / "bin" / "llama-ckpt", "merge", ckpt_3d, out, "--prefix", "", "--unique-id", "0"],
        check=True,
        timeout=120,
    )
    here = tmp_path / "here.pdparams"
    assert cli("merge", ckpt_3d, here, "--prefix", "", "--unique-id", "0").exit_code == 0
    assert out.read_bytes() == here.read_bytes()

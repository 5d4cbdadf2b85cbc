"""preprocess(): contents checked against the tokenizers themselves, worker-count determinism, failures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tokenizers
import zstandard
from corpus_files import TEXTS as COLUMN_TEXTS
from corpus_files import save_to_disk, write_arrow, write_jsonl, write_parquet

import llama_data.preprocessing as preprocess_module
from llama_data import DataError, IndexedDataset, preprocess
from llama_data.corpus import find_input_files, plan_tasks
from llama_data.preprocessing import resolve_dtype, usable_cpus

BYTE_EOS, BYTE_BOS = 257, 256


def documents(prefix):
    ds = IndexedDataset(prefix)
    ends = np.concatenate(([0], np.cumsum(ds.sizes)))
    return [ds.tokens[ends[a] : ends[b]].tolist() for a, b in zip(ds.doc_idx[:-1], ds.doc_idx[1:])]


def files_of(prefix):
    return Path(f"{prefix}.bin").read_bytes(), Path(f"{prefix}.idx").read_bytes()


@pytest.fixture
def corpus(tmp_path):
    """Three inputs of three formats; returns (inputs, every document's text in reading order)."""
    texts_a = [f"doc {i}: " + "naïve " * (i % 13) for i in range(400)]
    texts_b = ["zst one", "zst two\nwith a newline"]
    txt = "A whole text file.\n\nIt is one document.\n"
    d = tmp_path / "in"
    d.mkdir()
    write_jsonl(d / "a.jsonl", texts_a)
    (d / "b.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(
            "".join(json.dumps({"text": t}) + "\n" for t in texts_b).encode()
        )
    )
    (d / "c.txt").write_text(txt, encoding="utf-8")
    return [d], [*texts_a, *texts_b, txt]


def test_byte_tokenizer_output_is_bytes_plus_eos(tmp_path, corpus):
    inputs, texts = corpus
    result = preprocess(inputs, tmp_path / "out" / "ds", "byte")
    expected = [[*list(t.encode("utf-8")), BYTE_EOS] for t in texts]
    assert documents(tmp_path / "out" / "ds") == expected
    ds = IndexedDataset(tmp_path / "out" / "ds")
    assert ds.dtype == np.uint16
    assert len(ds) == ds.num_docs == len(texts)
    assert (result.documents, result.tokens, result.files) == (
        len(texts),
        sum(map(len, expected)),
        3,
    )
    assert result.bytes_in == sum(f.stat().st_size for f in (tmp_path / "in").iterdir())
    assert sorted(os.listdir(tmp_path / "out")) == ["ds.bin", "ds.idx"]


def test_output_is_identical_for_any_workers_and_chunking(tmp_path, corpus):
    inputs, _ = corpus
    preprocess(inputs, tmp_path / "w1", "byte")
    # Small chunks: the 400-line jsonl is cut into many tasks, spread over two processes.
    result = preprocess(inputs, tmp_path / "w2", "byte", workers=2, chunk_bytes=2000)
    assert result.workers == 2
    assert files_of(tmp_path / "w2") == files_of(tmp_path / "w1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "in",
        "w1.bin",
        "w1.idx",
        "w2.bin",
        "w2.idx",
    ]


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer.json (the Llama-3 / GPT-2 kind), trained on COLUMN_TEXTS."""
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(COLUMN_TEXTS, trainer)
    tok.save(str(path))
    return path


# 700 kB: a single file of it is cut into several tasks for two workers (at least 256 KiB each).
SPLIT_TEXTS = [
    f"doc {i}: " + "naïve café 🦙 words " * (i % 60) + "\n" * (i % 3) for i in range(1800)
]


@pytest.mark.parametrize("workers", [2, 3, "auto"])
def test_one_file_split_over_workers_gives_the_same_bytes(tmp_path, workers):
    jsonl = write_jsonl(tmp_path / "one.jsonl", SPLIT_TEXTS)
    parquet = write_parquet(tmp_path / "one.parquet", SPLIT_TEXTS, rows_per_group=100)
    expected = [[*t.encode(), BYTE_EOS] for t in SPLIT_TEXTS]
    for path in (jsonl, parquet):
        tasks = plan_tasks(find_input_files([path]), workers=2)
        assert len(tasks) >= 3 and len(plan_tasks(find_input_files([path]), workers=1)) == 1
        preprocess([path], tmp_path / "w1", "byte", overwrite=True)
        result = preprocess([path], tmp_path / "wn", "byte", workers=workers, overwrite=True)
        assert result.workers == (usable_cpus() if workers == "auto" else workers)
        assert files_of(tmp_path / "wn") == files_of(tmp_path / "w1")
        assert documents(tmp_path / "wn") == expected


def test_the_same_texts_give_the_same_bytes_in_every_format(tmp_path, bpe_tokenizer):
    inputs = {
        "jsonl": write_jsonl(tmp_path / "t.jsonl", COLUMN_TEXTS),
        "parquet": write_parquet(tmp_path / "t.parquet", COLUMN_TEXTS, rows_per_group=23),
        "datasets": save_to_disk(tmp_path / "saved", COLUMN_TEXTS, num_shards=2),
        "arrow file": write_arrow(tmp_path / "t.arrow", COLUMN_TEXTS, stream=False),
    }
    outputs = {}
    for name, path in inputs.items():
        for workers in (1, 2):
            prefix = tmp_path / f"{name}-{workers}"
            result = preprocess(
                [path], prefix, str(bpe_tokenizer), workers=workers, chunk_bytes=900
            )
            assert (result.documents, result.empty_documents) == (298, 2)
            outputs[name, workers] = files_of(prefix)
    assert len(set(outputs.values())) == 1
    # ... and they are the Hugging Face tokenizer's own ids (its batch encoder, what users compare).
    peer = tokenizers.Tokenizer.from_file(str(bpe_tokenizer))
    eos = peer.token_to_id("<|endoftext|>")
    kept = [t for t in COLUMN_TEXTS if t.strip()]
    encoded = peer.encode_batch(kept, add_special_tokens=False)
    assert documents(tmp_path / "jsonl-2") == [[*e.ids, eos] for e in encoded]


def test_a_bad_parquet_file_leaves_nothing(tmp_path):
    (tmp_path / "in").mkdir()
    good = write_parquet(tmp_path / "in" / "a.parquet", SPLIT_TEXTS, rows_per_group=100)
    texts = [*SPLIT_TEXTS[:50], None, *SPLIT_TEXTS[50:]]
    write_parquet(tmp_path / "in" / "b.parquet", texts, rows_per_group=20)
    with pytest.raises(DataError, match=r"b\.parquet: row group 2, row 10: 'text' is null"):
        preprocess([tmp_path / "in"], tmp_path / "out" / "ds", "byte", workers=2)
    assert os.listdir(tmp_path / "out") == []
    # A missing column is found before anything is created.
    with pytest.raises(DataError, match=r"a\.parquet: no column 'body'"):
        preprocess([good], tmp_path / "out2" / "ds", "byte", text_key="body")
    assert not (tmp_path / "out2").exists()


def test_text_key_and_its_former_name(tmp_path):
    path = write_jsonl(tmp_path / "k.jsonl", ["ab", "c"], key="content")
    preprocess([path], tmp_path / "new", "byte", text_key="content")
    preprocess([path], tmp_path / "old", "byte", json_key="content")
    assert documents(tmp_path / "new") == documents(tmp_path / "old") == [[97, 98, 257], [99, 257]]


def test_bos_and_no_eos(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ["hi", "yo"])
    preprocess([path], tmp_path / "ds", "byte", prepend_bos=True, append_eos=False, dtype="int32")
    assert documents(tmp_path / "ds") == [[BYTE_BOS, 104, 105], [BYTE_BOS, 121, 111]]
    assert IndexedDataset(tmp_path / "ds").dtype == np.int32


def test_sentencepiece_output_matches_sentencepiece(tmp_path):
    import sentencepiece as spm

    from llama_data import train_tokenizer

    texts = [f"Line {i} of a document about llamas.\n" * (1 + i % 40) for i in range(60)]
    path = write_jsonl(tmp_path / "a.jsonl", texts)
    model = train_tokenizer([path], tmp_path / "tok", 300, threads=1)
    preprocess([path], tmp_path / "ds", str(model))
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert documents(tmp_path / "ds") == [[*sp.encode(t), sp.eos_id()] for t in texts]


def test_resolve_dtype():
    assert resolve_dtype("auto", 32000) == np.uint16
    assert resolve_dtype("auto", 128256) == np.int32
    assert resolve_dtype("uint16", 65536) == np.uint16  # ids up to 65535
    with pytest.raises(DataError, match="--dtype uint16 cannot hold ids of a vocabulary of 65537"):
        resolve_dtype("uint16", 65537)


def test_existing_output_needs_overwrite(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ["one"])
    preprocess([path], tmp_path / "ds", "byte")
    write_jsonl(path, ["two"])
    with pytest.raises(DataError, match=r"ds\.bin already exists \(--overwrite"):
        preprocess([path], tmp_path / "ds", "byte")
    preprocess([path], tmp_path / "ds", "byte", overwrite=True)
    assert documents(tmp_path / "ds") == [[116, 119, 111, BYTE_EOS]]


def test_empty_corpus(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ["", "  "])
    with pytest.raises(DataError, match=r"no documents in the input \(1 files, 2 empty documents"):
        preprocess([path], tmp_path / "ds", "byte")
    assert os.listdir(tmp_path) == ["a.jsonl"]


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_line_stops_and_leaves_nothing(tmp_path, workers):
    write_jsonl(tmp_path / "a.jsonl", ["fine"] * 50)
    (tmp_path / "b.jsonl").write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    inputs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    with pytest.raises(DataError, match=r"b\.jsonl:2: invalid JSON"):
        preprocess(inputs, tmp_path / "out" / "ds", "byte", workers=workers, chunk_bytes=100)
    assert os.listdir(tmp_path / "out") == []


def test_skip_bad_lines_counts_them(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        '{"text": "ok"}\nnot json\n{"x": 1}\n{"text": "ok2"}\n', encoding="utf-8"
    )
    result = preprocess([tmp_path / "a.jsonl"], tmp_path / "ds", "byte", skip_bad_lines=True)
    assert result.bad_lines == 2
    assert result.first_bad_line.startswith(f"{tmp_path / 'a.jsonl'}:2: invalid JSON")
    assert documents(tmp_path / "ds") == [[111, 107, BYTE_EOS], [111, 107, 50, BYTE_EOS]]


def test_interrupt_midway_leaves_nothing(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "a.jsonl", ["one"])
    write_jsonl(tmp_path / "b.jsonl", ["two"])
    calls = []
    real = preprocess_module.tokenize_task

    def interrupted(task, *args, **kwargs):
        calls.append(task.index)
        if task.index == 1:
            raise KeyboardInterrupt
        return real(task, *args, **kwargs)

    monkeypatch.setattr(preprocess_module, "tokenize_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        # chunk_bytes=1: a task per line (small files are otherwise read as one task)
        inputs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
        preprocess(inputs, tmp_path / "out" / "ds", "byte", chunk_bytes=1)
    assert calls == [0, 1]
    assert os.listdir(tmp_path / "out") == []


def test_tokenizer_without_eos(tmp_path):
    import tokenizers

    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.save(str(tmp_path / "t.json"))
    path = write_jsonl(tmp_path / "a.jsonl", ["a"])
    with pytest.raises(DataError, match="has no EOS token"):
        preprocess([path], tmp_path / "ds", str(tmp_path / "t.json"))
    preprocess([path], tmp_path / "ds", str(tmp_path / "t.json"), append_eos=False)
    assert documents(tmp_path / "ds") == [[0]]

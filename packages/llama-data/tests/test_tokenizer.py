"""Tokenizer loading and training, checked against the sentencepiece and tokenizers libraries."""

from __future__ import annotations

import base64
import json
import random
import shutil
import sys

import pytest
import sentencepiece as spm
import tokenizers

from llama_data import DataError, Tokenizer, load_tokenizer, train_tokenizer
from llama_data.spm_model import read_model_settings, splits_at_newlines
from llama_data.tokenizer import SentencePieceTokenizer, split_after_newlines

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "he",
    "for",
    "it",
    "with",
    "as",
    "his",
    "on",
    "be",
    "at",
    "by",
    "had",
    "are",
    "but",
    "from",
    "or",
    "have",
    "an",
    "they",
]
TRICKY = [
    "",
    "\n",
    "\n\n\n",
    "plain words",
    "  leading spaces\n  and after a newline\n",
    "tabs\tand\r\nwindows lines\r\n",
    "digits 1234567 and 3.14159",
    "unicode: café, 中文, emoji 🦙, ünïcödé",
    "trailing space ",
]


def synthetic_lines(n, seed=0):
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) + f" {rng.randint(0, 999)}."
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def corpus_jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "train.jsonl"
    lines = synthetic_lines(3000)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(0, len(lines), 5):
            f.write(json.dumps({"text": "\n".join(lines[i : i + 5])}) + "\n")
    return path


@pytest.fixture(scope="module")
def spm_model(corpus_jsonl, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("tok") / "tok"
    return train_tokenizer([corpus_jsonl], prefix, 320, threads=1)


def long_text(lines=400):
    return (
        "\n".join(synthetic_lines(lines, seed=7)) + "\n\n  indented tail\r\n" + "no newline " * 300
    )


# -- byte tokenizer -------------------------------------------------------------------------------
def test_byte_tokenizer():
    tok = load_tokenizer("byte")
    assert isinstance(tok, Tokenizer)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (259, 256, 257)
    text = "héllo 🦙"
    assert tok.encode(text) == list(text.encode("utf-8"))
    assert tok.encode_batch([text, ""]) == [list(text.encode("utf-8")), []]
    assert tok.decode([256, *text.encode("utf-8"), 257, 258]) == text


# -- SentencePiece --------------------------------------------------------------------------------
def test_trained_model_has_llama_settings(spm_model):
    assert spm_model.suffix == ".model"
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    assert sp.vocab_size() == 320
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    # byte fallback: an unseen character becomes its UTF-8 bytes, never <unk>
    assert sp.encode_as_pieces("中")[-3:] == ["<0xE4>", "<0xB8>", "<0xAD>"]
    # digits split one by one
    assert [p.lstrip("▁") for p in sp.encode_as_pieces("90817") if p.lstrip("▁")] == list("90817")
    # whitespace and newlines survive a round trip (identity normalization, no collapsing)
    for text in TRICKY:
        assert sp.decode(sp.encode(text)) == text
    vocab = spm_model.with_suffix(".vocab").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 320
    assert vocab[:3] == ["<unk>\t0", "<s>\t0", "</s>\t0"]
    assert [line.split("\t")[0] for line in vocab] == [sp.id_to_piece(i) for i in range(320)]


def test_model_settings_reader(spm_model, corpus_jsonl, tmp_path):
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    settings = read_model_settings(sp.serialized_model_proto())
    assert settings.model_type == 2
    assert settings.has_charsmap is False
    assert settings.remove_extra_whitespaces is False
    assert list(settings.pieces) == [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    assert splits_at_newlines(settings)
    # SentencePiece's own defaults: unigram, NFKC normalization, whitespace collapsing
    spm.SentencePieceTrainer.train(
        input=str(corpus_jsonl), model_prefix=str(tmp_path / "uni"), vocab_size=300, minloglevel=2
    )
    uni = spm.SentencePieceProcessor(model_file=str(tmp_path / "uni.model"))
    settings = read_model_settings(uni.serialized_model_proto())
    assert (settings.model_type, settings.has_charsmap, settings.remove_extra_whitespaces) == (
        1,
        True,
        True,
    )
    assert not splits_at_newlines(settings)


def test_sentencepiece_tokenizer_matches_sentencepiece(spm_model):
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    tok = load_tokenizer(spm_model)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (320, 1, 2)
    texts = [*TRICKY, long_text(), "x" * 5000, "\n".join(["a"] * 3000)]
    assert tok.encode_batch(texts) == [sp.encode(t) for t in texts]
    assert tok.encode(texts[-3]) == sp.encode(texts[-3])
    assert tok.decode([1, *sp.encode(texts[-3]), 2]) == texts[-3]


def test_directory_with_tokenizer_model(spm_model, tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(spm_model.read_bytes())
    tok = load_tokenizer(tmp_path)
    assert tok.vocab_size == 320 and tok.eos_id == 2


def test_split_after_newlines():
    text = "aaa\nbb\ncccc\nd"
    assert split_after_newlines(text, 3) == ["aaa\n", "bb\n", "cccc\n", "d"]
    assert split_after_newlines(text, 4) == ["aaa\n", "bb\ncccc\n", "d"]
    assert split_after_newlines(text, 100) == [text]
    assert split_after_newlines("ab\n", 1) == ["ab\n"]
    for size in (1, 2, 5):
        assert "".join(split_after_newlines(long_text(20), size)) == long_text(20)


def test_train_refuses_existing_output(spm_model, corpus_jsonl):
    with pytest.raises(DataError, match=r"tok\.model already exists"):
        train_tokenizer([corpus_jsonl], spm_model.with_suffix(""), 320)


def test_train_on_empty_input(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no documents in the input"):
        train_tokenizer([tmp_path / "empty.jsonl"], tmp_path / "tok", 400)
    assert not (tmp_path / "tok.model").exists()


def test_train_reports_a_bad_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        train_tokenizer([tmp_path / "bad.jsonl"], tmp_path / "tok", 400)
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.jsonl"]


# -- Hugging Face tokenizer.json ------------------------------------------------------------------
def make_hf_tokenizer(path, specials):
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(synthetic_lines(500), trainer)
    tok.save(str(path))
    return tok


def test_hf_tokenizer_llama3_specials(tmp_path):
    ref = make_hf_tokenizer(
        tmp_path / "tokenizer.json", ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    )
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert tok.eos_id == ref.token_to_id("<|end_of_text|>")
    assert tok.bos_id == ref.token_to_id("<|begin_of_text|>")
    assert tok.vocab_size == ref.get_vocab_size(with_added_tokens=True)
    texts = ["the cat 123", "unicode café 🦙", ""]
    assert tok.encode_batch(texts) == [ref.encode(t, add_special_tokens=False).ids for t in texts]
    assert tok.decode([tok.bos_id, *tok.encode(texts[1]), tok.eos_id]) == texts[1]


def test_hf_tokenizer_config_names_eos(tmp_path):
    ref = make_hf_tokenizer(tmp_path / "tokenizer.json", ["<s>", "</s>", "<|eot_id|>"])
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": {"content": "<|eot_id|>"}, "bos_token": "<s>"})
    )
    tok = load_tokenizer(tmp_path)  # the directory
    assert tok.eos_id == ref.token_to_id("<|eot_id|>")
    assert tok.bos_id == ref.token_to_id("<s>")


def test_hf_tokenizer_without_specials(tmp_path):
    make_hf_tokenizer(tmp_path / "tok.json", [])
    tok = load_tokenizer(tmp_path / "tok.json")
    assert tok.eos_id is None and tok.bos_id is None


# -- errors ---------------------------------------------------------------------------------------
def test_missing_optional_dependency(spm_model, tmp_path, monkeypatch):
    (tmp_path / "t.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(
        DataError,
        match=r"needs the 'sentencepiece' package: pip install 'llama-data\[sentencepiece\]'",
    ):
        load_tokenizer(spm_model)
    with pytest.raises(
        DataError, match=r"needs the 'tokenizers' package: pip install 'llama-data\[hf\]'"
    ):
        load_tokenizer(tmp_path / "t.json")


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "nothing.model", "no such file or directory"),
        (b"not a model", "junk.model", "not a readable SentencePiece model"),
        (b"{ not json", "junk.json", "not a readable tokenizer.json"),
    ],
)
def test_bad_tokenizer_spec(tmp_path, content, name, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_tokenizer(tmp_path / name)


def test_directory_without_tokenizer(tmp_path):
    with pytest.raises(DataError, match=r"neither tokenizer\.model nor tokenizer\.json"):
        load_tokenizer(tmp_path)


def test_content_decides_and_bad_files_are_one_line(spm_model, tmp_path):
    shutil.copy(spm_model, tmp_path / "tokenizer.model")
    assert isinstance(load_tokenizer(tmp_path), SentencePieceTokenizer)  # a protobuf, not tiktoken
    bad = tmp_path / "bad.model"
    good = b"".join(base64.b64encode(bytes([i])) + b" %d\n" % i for i in range(10))
    bad.write_bytes(good + b"!!!! 10\n")  # tiktoken by its first lines, broken further down
    with pytest.raises(DataError, match="line 11 is not 'base64-token rank'"):
        load_tokenizer(bad)

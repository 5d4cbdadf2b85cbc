"""Tokenizers behind one small protocol: SentencePiece models, Hugging Face ``tokenizer.json``,
Meta's tiktoken ``tokenizer.model`` (Llama-3), bytes.

``load_tokenizer(spec)`` picks the implementation from the spec, and tells a ``tokenizer.model`` by
its content: a SentencePiece model (LLaMA-1/2) is a protobuf, Llama-3's is tiktoken's text format
(one ``base64-token rank`` line per token). SentencePiece, Hugging Face ``tokenizers`` and
``tiktoken`` are optional dependencies, imported only when a spec needs them.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from llama_data.errors import DataError, first_line
from llama_data.spm_model import read_model_settings, splits_at_newlines

BYTE_SPEC = "byte"

# Special tokens of the common LLaMA-family tokenizer.json files, most specific first. For
# pretraining the end-of-text token separates documents, so it wins over the chat turn end.
_EOS_CANDIDATES = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<|eot_id|>", "<eos>", "<|im_end|>")
_BOS_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")


@runtime_checkable
class Tokenizer(Protocol):
    """What preprocessing and inspection need from a tokenizer."""

    name: str
    vocab_size: int
    eos_id: int | None
    bos_id: int | None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without BOS/EOS."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``, the tokenizer's fastest way to encode many texts."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens (BOS, EOS, padding) decode to nothing."""


def optional_import(module: str, extra: str, purpose: str):
    """Import an optional dependency, or explain in one line which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DataError(
            f"{purpose} needs the '{module}' package: pip install 'llama-data[{extra}]'"
        ) from exc


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus BOS 256, EOS 257 and PAD 258; needs no file."""

    name = BYTE_SPEC
    bos_id = 256
    eos_id = 257
    pad_id = 258
    vocab_size = 259

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class SentencePieceTokenizer:
    """A SentencePiece ``.model`` (the LLaMA-1/2 tokenizer format)."""

    def __init__(self, path: str | os.PathLike):
        spm = optional_import("sentencepiece", "sentencepiece", "a SentencePiece tokenizer")
        self.path = Path(path)
        self.name = str(path)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(path))
            settings = read_model_settings(self._sp.serialized_model_proto())
        except (OSError, RuntimeError, ValueError, IndexError) as exc:
            raise DataError(
                f"{path}: not a readable SentencePiece model ({first_line(exc)})"
            ) from exc
        self.vocab_size = self._sp.vocab_size()
        self.eos_id = _id_or_none(self._sp.eos_id())
        self.bos_id = _id_or_none(self._sp.bos_id())
        # SentencePiece's BPE slows down as a text grows (about 6 MB/s at 1 kB, 1 MB/s at 100 kB), so
        # long texts are encoded in newline-ended parts where that gives the same ids (spm_model).
        # Each part but the first is encoded behind a newline, whose ids are then dropped, so that
        # it is encoded as in the middle of the text (no dummy-prefix space).
        self._newline_ids = self._sp.encode("\n") if splits_at_newlines(settings) else None

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # One thread: preprocessing scales with --workers, one core each.
        if self._newline_ids is None:
            return self._sp.encode(list(texts), num_threads=1)
        parts, counts = [], []
        for text in texts:
            pieces = split_after_newlines(text, _PART_CHARS)
            counts.append(len(pieces))
            parts.append(pieces[0])
            parts.extend("\n" + p for p in pieces[1:])
        encoded = self._sp.encode(parts, num_threads=1)
        prefix = self._newline_ids
        skip = len(prefix)
        result = []
        i = 0
        for text, count in zip(texts, counts):
            if count == 1:
                result.append(encoded[i])
            else:
                rest = encoded[i + 1 : i + count]
                if all(ids[:skip] == prefix for ids in rest):
                    ids = encoded[i]
                    for more in rest:
                        ids.extend(more[skip:])
                    result.append(ids)
                else:  # not expected; the whole text is always right
                    result.append(self._sp.encode(text))
            i += count
        return result

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])


# Parts of about this many characters encode fastest (per-call overhead vs. BPE's superlinear cost).
_PART_CHARS = 1000


def split_after_newlines(text: str, size: int) -> list[str]:
    """``text`` cut right after newlines into parts of at least ``size`` characters (bar the last)."""
    parts = []
    start = 0
    while True:
        cut = text.find("\n", start + size - 1)
        if cut < 0 or cut == len(text) - 1:
            parts.append(text[start:])
            return parts
        parts.append(text[start : cut + 1])
        start = cut + 1


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` (LLaMA-3 and most recent models)."""

    def __init__(self, path: str | os.PathLike):
        tokenizers = optional_import("tokenizers", "hf", "a tokenizer.json tokenizer")
        self.path = Path(path)
        self.name = str(path)
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a bare Exception for any parse error
            raise DataError(f"{path}: not a readable tokenizer.json ({first_line(exc)})") from exc
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        config = _read_tokenizer_config(self.path.parent / "tokenizer_config.json")
        self.eos_id = self._special_id(config.get("eos_token"), _EOS_CANDIDATES)
        self.bos_id = self._special_id(config.get("bos_token"), _BOS_CANDIDATES)

    def _special_id(self, configured, candidates: Sequence[str]) -> int | None:
        if isinstance(configured, dict):
            configured = configured.get("content")
        if isinstance(configured, str):
            token_id = self._tok.token_to_id(configured)
            if token_id is None:
                raise DataError(
                    f"{self.path}: tokenizer_config.json names {configured!r}, which is not in the vocabulary"
                )
            return token_id
        for token in candidates:
            token_id = self._tok.token_to_id(token)
            if token_id is not None:
                return token_id
        return None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # encode_batch_fast (tokenizers >= 0.20) skips the character offsets, which nothing here
        # uses: the same ids for less work.
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


class TiktokenTokenizer:
    """Meta's Llama-3 ``tokenizer.model``: tiktoken BPE ranks plus Llama-3's 256 special tokens.

    Read with OpenAI's ``tiktoken`` (the library Meta's reference tokenizer uses: a maintained Rust
    BPE), with Meta's split pattern and special tokens. The rank file is parsed here, not by
    ``tiktoken.load``, which would also cache it under the temporary directory."""

    PATTERN = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
        r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    SPECIAL = (
        "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>", "<|reserved_special_token_2|>",
        "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
        "<|reserved_special_token_4|>", "<|eot_id|>",
        *(f"<|reserved_special_token_{i}|>" for i in range(5, 256 - 5)),
    )  # fmt: skip

    def __init__(self, path: str | os.PathLike):
        tiktoken = optional_import("tiktoken", "tiktoken", "a tiktoken tokenizer.model (Llama-3)")
        self.path = Path(path)
        self.name = str(path)
        ranks = _read_tiktoken_ranks(self.path)
        self._base = len(ranks)
        specials = {token: self._base + i for i, token in enumerate(self.SPECIAL)}
        self._enc = tiktoken.Encoding(
            name=self.path.name,
            pat_str=self.PATTERN,
            mergeable_ranks=ranks,
            special_tokens=specials,
        )
        self.vocab_size = self._base + len(specials)
        self.bos_id = specials["<|begin_of_text|>"]
        self.eos_id = specials["<|end_of_text|>"]

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # Not encode_ordinary_batch, which starts a pool of 8 threads per call: preprocessing
        # scales with --workers, one core each.
        encode = self._enc.encode_ordinary
        return [encode(text) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode([int(i) for i in ids if int(i) < self._base])


_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/]+={0,2} \d+\r?$")


def is_tiktoken_file(path: Path) -> bool:
    """Whether ``path`` starts with tiktoken's ``base64-token rank`` lines (not a protobuf)."""
    with open(path, "rb") as f:
        lines = f.read(4096).split(b"\n")[:8]
    return len(lines) > 1 and all(_TIKTOKEN_LINE.match(line) for line in lines[:-1] if line)


def _read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """The ``token -> rank`` table of a tiktoken file, checked: every token and every rank once,
    the ranks 0 to N-1 without a gap (the special tokens take the ids from N on), and every single
    byte a token (tiktoken encodes any text from those). tiktoken itself panics on a repeated rank
    and on text with a byte it lacks, and takes a gap as ids past the vocabulary."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    ranks: dict[bytes, int] = {}
    token_line: dict[bytes, int] = {}
    rank_line: dict[int, int] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            token, rank_text = line.split()
            token = base64.b64decode(token, validate=True)
            rank = int(rank_text)
        except (ValueError, binascii.Error):
            raise DataError(
                f"{path}: line {number} is not 'base64-token rank' (tiktoken format)"
            ) from None
        if token in token_line:
            raise DataError(
                f"{path}: line {number} lists token {token!r} again (first on line "
                f"{token_line[token]})"
            )
        if rank in rank_line:
            raise DataError(
                f"{path}: line {number} gives rank {rank} again (first on line {rank_line[rank]}): "
                "each token needs a rank of its own"
            )
        ranks[token] = rank
        token_line[token] = rank_line[rank] = number
    if not ranks:
        raise DataError(f"{path}: no 'base64-token rank' line (tiktoken format)")
    if max(rank_line) != len(ranks) - 1 or min(rank_line) != 0:
        missing = next(r for r in range(len(ranks) + 1) if r not in rank_line)
        raise DataError(
            f"{path}: the ranks of its {len(ranks):,} tokens must run from 0 to {len(ranks) - 1:,} "
            f"(the special tokens take the ids after them), but rank {missing:,} is missing and the "
            f"largest is {max(rank_line):,}"
        )
    absent = [b for b in range(256) if bytes([b]) not in ranks]
    if absent:
        raise DataError(
            f"{path}: byte 0x{absent[0]:02x} has no token ({len(absent)} of the 256 bytes lack "
            "one): tiktoken needs every single byte to encode any text"
        )
    return ranks


def _tokenizer_model(path: Path, json_beside: Path | None) -> Tokenizer:
    """A ``tokenizer.model`` by its content; Llama-3's with its ``tokenizer.json`` beside it goes to
    Hugging Face ``tokenizers`` (the same ids), alone to tiktoken."""
    if not is_tiktoken_file(path):
        return SentencePieceTokenizer(path)
    if json_beside is not None and json_beside.is_file():
        return HFTokenizer(json_beside)
    return TiktokenTokenizer(path)


def load_tokenizer(spec: str | os.PathLike) -> Tokenizer:
    """A tokenizer from ``spec``: ``"byte"``, a SentencePiece ``.model``, a tiktoken
    ``tokenizer.model`` (Llama-3), a ``tokenizer.json``, or a directory holding ``tokenizer.model``
    (preferred: the original) or ``tokenizer.json``."""
    spec_str = os.fspath(spec)
    if spec_str == BYTE_SPEC:
        return ByteTokenizer()
    path = Path(spec_str)
    if path.is_dir():
        if (path / "tokenizer.model").is_file():
            return _tokenizer_model(path / "tokenizer.model", path / "tokenizer.json")
        if (path / "tokenizer.json").is_file():
            return HFTokenizer(path / "tokenizer.json")
        raise DataError(f"{path}: directory holds neither tokenizer.model nor tokenizer.json")
    if not path.is_file():
        raise DataError(
            f"tokenizer {spec_str!r}: no such file or directory (expected a SentencePiece .model, "
            f"a tokenizer.json, a directory holding one, or '{BYTE_SPEC}')"
        )
    if path.suffix == ".json" or _starts_with_brace(path):
        return HFTokenizer(path)
    return _tokenizer_model(path, None)


def _starts_with_brace(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(64).lstrip().startswith(b"{")


def _read_tokenizer_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({first_line(exc)})") from exc
    return config if isinstance(config, dict) else {}


def _id_or_none(token_id: int) -> int | None:
    return token_id if token_id >= 0 else None

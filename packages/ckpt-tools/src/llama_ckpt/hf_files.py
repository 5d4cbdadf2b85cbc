"""The files beside an hf export's weights that tell transformers (and lm-eval, vLLM) how the model
was trained to read and end text: ``tokenizer_config.json`` and ``generation_config.json``.

Without them transformers guesses: the tokenizer class from ``config.json`` (``LlamaTokenizer``,
which starts every text with BOS) and its special tokens from its defaults. The project's data
was tokenized by llama-data, whose ``preprocess`` writes ``tokens [EOS]`` per document (BOS only
with ``--prepend-bos``, a choice the checkpoint does not record; llama-infer prepends none either,
unless a ``tokenizer_config.json`` says ``add_bos_token``), and reads the text of a special token
inside a document as text (SentencePiece, tiktoken) or as that token (``tokenizer.json``). So the
written tokenizer config adds neither BOS nor EOS, splits special-token text as llama-data does,
and names the tokenizer's own BOS, EOS and unknown tokens; the generation config names their ids,
which end a generation as they ended the training documents.

The tokenizer is the one the checkpoint carries (llama-train copies ``--tokenizer`` into every
checkpoint), chosen as llama-data chooses it in a directory: ``tokenizer.model`` (a SentencePiece
model, or Meta's Llama-3 tiktoken file, which goes to its ``tokenizer.json`` when one is beside it),
else ``tokenizer.json``. Nothing here needs the tokenizer libraries: a SentencePiece model's
special pieces are read from its protobuf (``ModelProto``: field 1 the pieces, each with the string
in its field 1; field 2 the ``TrainerSpec``, whose fields 40-43 are the ids of unk, bos, eos, pad).

``tokenizer_class`` is named only for a ``tokenizer.json`` (``PreTrainedTokenizerFast``, read alike
by transformers 4 and 5). For a SentencePiece model no name is right in both: transformers 5's
``LlamaTokenizer`` pre-tokenizes with ``Metaspace``, which does not add SentencePiece's dummy-prefix
space to a text that starts with one (``" x"`` encodes to other ids), and transformers 4's
``PreTrainedTokenizerFast`` cannot read a SentencePiece model. Unnamed, transformers 5 converts the
model itself (its ``TokenizersBackend``) and transformers 4 takes ``LlamaTokenizerFast`` from
``config.json`` with ``legacy`` set as written here; both then encode as SentencePiece does (checked
on 4.57 and 5.25).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from .errors import CheckpointError

TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"

# Special tokens of common tokenizer.json files, most specific first (llama-data's rule: for
# pretraining the end-of-text token separates documents, so it wins over a chat turn's end).
_EOS_CANDIDATES = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<|eot_id|>", "<eos>", "<|im_end|>")
_BOS_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")
_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/]+={0,2} \d+\r?$")


@dataclass(frozen=True)
class SpecialTokens:
    kind: str  # "sentencepiece", "tokenizer.json" or "tiktoken"
    bos: tuple[str, int] | None
    eos: tuple[str, int] | None
    unk: tuple[str, int] | None = None
    pad: tuple[str, int] | None = None


def special_tokens(directory: str) -> SpecialTokens | None:
    """The special tokens of the tokenizer in ``directory``, or None if it holds none."""
    model = os.path.join(directory, "tokenizer.model")
    as_json = os.path.join(directory, "tokenizer.json")
    try:
        if os.path.isfile(model):
            with open(model, "rb") as f:
                data = f.read()
            if not _is_tiktoken(data):
                return _sentencepiece(model, data)
            if not os.path.isfile(as_json):
                return _tiktoken(data)
        if os.path.isfile(as_json):
            with open(as_json, "rb") as f:
                return _tokenizer_json(as_json, f.read())
    except OSError as e:
        raise CheckpointError(f"cannot read {e.filename}: {e.strerror}") from None
    return None


def tokenizer_config(tokens: SpecialTokens, model_max_length: int | None) -> dict:
    config: dict = {"add_bos_token": False, "add_eos_token": False}
    for role in ("bos", "eos", "unk", "pad"):
        token = getattr(tokens, role)
        if token is not None:
            config[f"{role}_token"] = token[0]
    if tokens.kind == "tokenizer.json":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if tokens.kind == "sentencepiece":  # transformers 4: SentencePiece's dummy prefix, as it is
        config["legacy"] = True
    # llama-data encodes "<s>" inside a text as text with a SentencePiece or tiktoken model, and
    # as the special token with a tokenizer.json (the tokenizers library matches added tokens).
    config["split_special_tokens"] = tokens.kind != "tokenizer.json"
    config["clean_up_tokenization_spaces"] = False
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    return config


def generation_config(tokens: SpecialTokens | None, model_config: dict) -> dict:
    """BOS/EOS (and PAD) ids: the tokenizer's where it has them, else ``config.json``'s."""
    out = {}
    for role in ("bos", "eos", "pad"):
        token = getattr(tokens, role) if tokens is not None else None
        value = token[1] if token is not None else model_config.get(f"{role}_token_id")
        if value is not None:
            out[f"{role}_token_id"] = value
    return out


# ------------------------------------------------------------------------------------ readers
def _is_tiktoken(data: bytes) -> bool:
    """llama-data's test (``base64-token rank`` lines), and a first line: a SentencePiece protobuf
    starts with b"\n" (its field 1)."""
    lines = data[:4096].split(b"\n")[:8]
    return (
        len(lines) > 1
        and bool(lines[0])
        and all(_TIKTOKEN_LINE.match(line) for line in lines[:-1] if line)
    )


def _tiktoken(data: bytes) -> SpecialTokens:
    """Meta's Llama-3 file: its ranks, then the special tokens (llama-data's TiktokenTokenizer)."""
    base = sum(1 for line in data.splitlines() if line.strip())
    return SpecialTokens("tiktoken", ("<|begin_of_text|>", base), ("<|end_of_text|>", base + 1))


def _tokenizer_json(path: str, data: bytes) -> SpecialTokens:
    try:
        spec = json.loads(data)
        added = {t["content"]: int(t["id"]) for t in spec.get("added_tokens") or ()}
        vocab = (spec.get("model") or {}).get("vocab")
    except (ValueError, TypeError, KeyError, AttributeError):
        raise CheckpointError(f"{path} is not a tokenizer.json") from None
    vocab = vocab if isinstance(vocab, dict) else {}

    def find(candidates):
        for token in candidates:
            found = added.get(token, vocab.get(token))
            if isinstance(found, int):
                return token, found
        return None

    return SpecialTokens("tokenizer.json", find(_BOS_CANDIDATES), find(_EOS_CANDIDATES))


def _sentencepiece(path: str, data: bytes) -> SpecialTokens:
    ids = {"unk": 0, "bos": 1, "eos": 2, "pad": -1}  # TrainerSpec's defaults
    pieces: list[str] = []
    try:
        for number, wire, value in _fields(data):
            if number == 1 and wire == 2:
                piece = next((v for n, w, v in _fields(value) if n == 1 and w == 2), b"")
                pieces.append(piece.decode("utf-8"))
            elif number == 2 and wire == 2:
                for n, w, v in _fields(value):
                    if 40 <= n <= 43 and w == 0:
                        ids[("unk", "bos", "eos", "pad")[n - 40]] = _int32(v)
    except (IndexError, ValueError, UnicodeDecodeError):
        raise CheckpointError(
            f"{path} is not a SentencePiece model (nor a tiktoken file)"
        ) from None
    if not pieces:
        raise CheckpointError(f"{path} is not a SentencePiece model (no pieces)")

    def token(role):
        i = ids[role]
        if i < 0:
            return None
        if i >= len(pieces):
            raise CheckpointError(f"{path}: {role} id {i} is past its {len(pieces)} pieces")
        return pieces[i], i

    return SpecialTokens(
        "sentencepiece", token("bos"), token("eos"), unk=token("unk"), pad=token("pad")
    )


def _int32(value: int) -> int:
    """A protobuf int32 (a negative one is written as a 64-bit two's complement varint)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message; value an int or the field's bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise IndexError("truncated message")
        yield number, wire, value

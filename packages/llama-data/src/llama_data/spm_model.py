"""The few settings of a SentencePiece model file that decide whether text can be encoded in pieces.

A ``.model`` file is a serialized ``ModelProto`` (sentencepiece_model.proto). Reading three of its
fields with a minimal protobuf wire-format reader avoids a dependency on ``protobuf``:

    ModelProto      1: repeated SentencePiece pieces   2: TrainerSpec   3: NormalizerSpec
    SentencePiece   1: string piece   3: enum type
    TrainerSpec     3: enum model_type (1 UNIGRAM, 2 BPE, 3 WORD, 4 CHAR; default UNIGRAM)
    NormalizerSpec  2: bytes precompiled_charsmap   4: bool remove_extra_whitespaces (default true)
"""

from __future__ import annotations

from dataclasses import dataclass

BPE = 2


@dataclass(frozen=True)
class ModelSettings:
    model_type: int
    has_charsmap: bool  # False: the identity normalization (no character is rewritten)
    remove_extra_whitespaces: bool
    pieces: tuple[str, ...]


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
    """(field number, wire type, value) of one message; value is an int or the bytes of a field."""
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
        yield number, wire, value


def read_model_settings(proto: bytes) -> ModelSettings:
    model_type = 1
    has_charsmap = False
    remove_extra_whitespaces = True
    pieces: list[str] = []
    for number, wire, value in _fields(proto):
        if number == 1 and wire == 2:
            piece = next((v for n, w, v in _fields(value) if n == 1 and w == 2), b"")
            pieces.append(piece.decode("utf-8", errors="replace"))
        elif number == 2 and wire == 2:
            for n, w, v in _fields(value):
                if n == 3 and w == 0:
                    model_type = v
        elif number == 3 and wire == 2:
            for n, w, v in _fields(value):
                if n == 2 and w == 2:
                    has_charsmap = len(v) > 0
                elif n == 4 and w == 0:
                    remove_extra_whitespaces = bool(v)
    return ModelSettings(model_type, has_charsmap, remove_extra_whitespaces, tuple(pieces))


def splits_at_newlines(settings: ModelSettings) -> bool:
    """True when encoding a text equals encoding its newline-ended parts one after another.

    A BPE merge only ever produces a piece of the vocabulary. If no piece of more than one character
    contains a newline, no merge crosses one, so a newline is a fixed boundary and the pieces on each
    side are merged independently. That holds only if the text reaches the BPE unchanged (identity
    normalization, no whitespace collapsing across lines).
    """
    return (
        settings.model_type == BPE
        and not settings.has_charsmap
        and not settings.remove_extra_whitespaces
        and not any("\n" in p and len(p) > 1 for p in settings.pieces)
    )

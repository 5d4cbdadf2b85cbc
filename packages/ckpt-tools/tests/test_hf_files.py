"""The tokenizer_config.json and generation_config.json of an hf export, from the tokenizer beside the
weights: its special tokens read without the tokenizer libraries (a SentencePiece protobuf built
here by hand, a tokenizer.json, Meta's tiktoken file). llama-infer's tests check the result against
transformers' AutoTokenizer and llama-data's tokenizers."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from llama_ckpt import CheckpointError, export
from llama_ckpt.hf_files import special_tokens


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # a negative int32 is written as its 64-bit two's complement
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def _field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _spm(pieces: list[str], **trainer_ids: int) -> bytes:
    """A ModelProto: its pieces (string and type) and a TrainerSpec with the ids given."""
    fields = {"unk_id": 40, "bos_id": 41, "eos_id": 42, "pad_id": 43}
    proto = b"".join(_field(1, _field(1, p.encode()) + _field(3, 1)) for p in pieces)
    spec = _field(3, 2)  # model_type BPE, a field the reader skips
    spec += b"".join(_field(fields[k], v) for k, v in trainer_ids.items())
    return proto + _field(2, spec) + _field(3, _field(4, 0))


def _model_dir(path, **config):
    path.mkdir()
    save_file(
        {"llama.embed_tokens.weight": np.zeros((8, 4), np.float32), "lm_head.weight": np.ones((4, 8), np.float32)},
        str(path / "model.safetensors"),
    )  # fmt: skip
    (path / "config.json").write_text(json.dumps({"vocab_size": 8, **config}))
    return path


def test_sentencepiece_special_pieces_are_read_from_the_protobuf(tmp_path):
    pieces = ["<unk>", "<s>", "</s>", "▁a", "<pad>", "<bos>"]
    (tmp_path / "tokenizer.model").write_bytes(_spm(pieces))  # the TrainerSpec's defaults
    tokens = special_tokens(str(tmp_path))
    assert (tokens.kind, tokens.bos, tokens.eos, tokens.unk, tokens.pad) == (
        "sentencepiece", ("<s>", 1), ("</s>", 2), ("<unk>", 0), None,
    )  # fmt: skip
    (tmp_path / "tokenizer.model").write_bytes(_spm(pieces, bos_id=5, pad_id=4, eos_id=-1))
    tokens = special_tokens(str(tmp_path))
    assert (tokens.bos, tokens.eos, tokens.unk, tokens.pad) == (
        ("<bos>", 5), None, ("<unk>", 0), ("<pad>", 4),
    )  # fmt: skip
    (tmp_path / "tokenizer.model").write_bytes(_spm(pieces, eos_id=9))
    with pytest.raises(CheckpointError, match=r"tokenizer\.model: eos id 9 is past its 6 pieces"):
        special_tokens(str(tmp_path))
    (tmp_path / "tokenizer.model").write_bytes(_spm(pieces)[:-9])  # cut inside the TrainerSpec
    with pytest.raises(CheckpointError, match="is not a SentencePiece model"):
        special_tokens(str(tmp_path))


def test_tiktoken_and_tokenizer_json(tmp_path):
    ranks = b"".join(base64.b64encode(bytes([i])) + b" %d\n" % i for i in range(256))
    (tmp_path / "tokenizer.model").write_bytes(ranks)
    tokens = special_tokens(str(tmp_path))
    assert (tokens.kind, tokens.bos, tokens.eos) == (
        "tiktoken", ("<|begin_of_text|>", 256), ("<|end_of_text|>", 257),
    )  # fmt: skip
    # With its tokenizer.json beside it, a tiktoken tokenizer.model is read through the json (as
    # llama-data reads it); the end of text wins over a chat turn's end.
    added = [
        {"id": 7, "content": "<|eot_id|>", "special": True},
        {"id": 5, "content": "<|end_of_text|>", "special": True},
    ]
    spec = {"added_tokens": added, "model": {"vocab": {"<s>": 3, "a": 4}}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    tokens = special_tokens(str(tmp_path))
    assert (tokens.kind, tokens.bos, tokens.eos) == (
        "tokenizer.json",
        ("<s>", 3),
        ("<|end_of_text|>", 5),
    )
    (tmp_path / "tokenizer.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json is not a tokenizer\.json"):
        special_tokens(str(tmp_path))
    assert special_tokens(str(tmp_path / "nothing-here")) is None


def test_hf_export_writes_both_files(tmp_path):
    src = _model_dir(tmp_path / "src", max_position_embeddings=32, bos_token_id=1, eos_token_id=2)
    (src / "tokenizer.model").write_bytes(_spm(["<unk>", "<s>", "</s>", "▁a"]))
    export(str(src), str(tmp_path / "hf"), layout="hf")
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text()) == {
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "legacy": True,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 32,
    }
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 2}
    # the paddle layout stays as it was: the tokenizer file, nothing written for transformers
    export(str(src), str(tmp_path / "paddle"))
    assert sorted(p.name for p in (tmp_path / "paddle").iterdir()) == [
        "config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.model",
    ]  # fmt: skip


def test_without_a_tokenizer_the_ids_come_from_config_json(tmp_path):
    src = _model_dir(tmp_path / "src", bos_token_id=256, eos_token_id=257, pad_token_id=258)
    export(str(src), str(tmp_path / "hf"), layout="hf")
    assert not (tmp_path / "hf" / "tokenizer_config.json").exists()
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 256, "eos_token_id": 257, "pad_token_id": 258}


def test_a_broken_tokenizer_is_refused_before_writing(tmp_path):
    src = _model_dir(tmp_path / "src")
    (src / "tokenizer.model").write_bytes(_spm(["<unk>", "<s>"])[:6])  # cut inside a piece
    with pytest.raises(CheckpointError, match=r"tokenizer\.model is not a SentencePiece model"):
        export(str(src), str(tmp_path / "hf"), layout="hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]

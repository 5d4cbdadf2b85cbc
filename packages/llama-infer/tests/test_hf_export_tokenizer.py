"""An hf export (llama-ckpt-tools) of a model whose directory carries its tokenizer, as a llama-train
checkpoint does: transformers' AutoTokenizer reads it as llama-data's tokenizer encodes (no BOS or
EOS added; special-token text read as llama-data reads it: text for SentencePiece, the token for a
tokenizer.json), and its generation config ends on the tokenizer's EOS, the token llama-data's
preprocess ends every training document with."""

from __future__ import annotations

import json
import random
import shutil

import pytest
from conftest import random_model, save_pdparams, tiny_config

from llama_ckpt import export
from llama_data import load_tokenizer, train_tokenizer

WORDS = ["the", "of", "and", "to", "in", "is", "was", "he", "for", "it", "with", "as", "his", "on"]
TEXTS = [
    "",
    "\n",
    "plain words",
    " x",  # SentencePiece adds its dummy-prefix space before this one too
    "  leading spaces\n  and after a newline\n",
    "tabs\tand\r\nwindows lines\r\n",
    "digits 1234567 and 3.14159",
    "unicode: café, 中文, emoji 🦙",
    "trailing space ",
    "<s> special-token text </s> <|begin_of_text|> <|end_of_text|>",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    lines = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) + f" {rng.randint(0, 999)}."
        for _ in range(2000)
    ]
    path = tmp_path_factory.mktemp("corpus") / "train.jsonl"
    path.write_text(
        "".join(json.dumps({"text": "\n".join(lines[i : i + 5])}) + "\n" for i in range(0, 2000, 5))
    )
    return path, lines[:40]


def _sentencepiece(corpus, directory):
    """llama-data's train-tokenizer (LLaMA's settings: unk 0, bos 1, eos 2), as tokenizer.model."""
    model = train_tokenizer([corpus], directory / "tok", 320, threads=1)
    shutil.copy(model, directory / "tokenizer.model")


def _tokenizer_json(corpus, directory):
    """A byte-level BPE tokenizer.json with Llama-3's special tokens (the Hugging Face layout)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    tok.train_from_iterator(texts, trainer)
    tok.save(str(directory / "tokenizer.json"))


CASES = {  # builder, the tokenizer_config.json the export writes, bos and eos ids
    "sentencepiece": (
        _sentencepiece,
        {
            "add_bos_token": False,
            "add_eos_token": False,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "legacy": True,
            "split_special_tokens": True,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 64,
        },
        (1, 2),
    ),
    "tokenizer.json": (
        _tokenizer_json,
        {
            "add_bos_token": False,
            "add_eos_token": False,
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|end_of_text|>",
            "tokenizer_class": "PreTrainedTokenizerFast",
            "split_special_tokens": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 64,
        },
        (0, 1),
    ),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_hf_export_tokenizes_and_ends_as_training_did(corpus, tmp_path, kind):
    from transformers import AutoTokenizer, GenerationConfig

    build, tokenizer_config, (bos, eos) = CASES[kind]
    source = tmp_path / "model"  # weights, config.json and the tokenizer, as a checkpoint has them
    model = random_model(tiny_config(vocab_size=512, bos_token_id=bos, eos_token_id=eos), seed=3)
    save_pdparams(model, str(source))
    build(corpus[0], source)
    ours = load_tokenizer(source)  # what preprocessing and llama-infer use
    assert (ours.bos_id, ours.eos_id) == (bos, eos)

    out = tmp_path / "hf"
    export(str(source / "model.pdparams"), str(out), layout="hf")
    assert json.loads((out / "tokenizer_config.json").read_text()) == tokenizer_config
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": 0}

    hf = AutoTokenizer.from_pretrained(out)
    assert (hf.bos_token_id, hf.eos_token_id) == (bos, eos)
    for text in TEXTS + corpus[1]:
        assert hf(text)["input_ids"] == ours.encode(text), repr(text)
    assert GenerationConfig.from_pretrained(out).eos_token_id == ours.eos_id


def test_the_source_directory_files_are_shipped_as_they_are(corpus, tmp_path):
    """A tokenizer_config.json or generation_config.json beside the weights is the model's own."""
    source = tmp_path / "model"
    save_pdparams(random_model(tiny_config(vocab_size=512), seed=3), str(source))
    _sentencepiece(corpus[0], source)
    (source / "tokenizer_config.json").write_text('{"add_bos_token": true}')
    (source / "generation_config.json").write_text('{"eos_token_id": 2, "temperature": 0.7}')
    out = tmp_path / "hf"
    export(str(source / "model.pdparams"), str(out), layout="hf")
    assert (out / "tokenizer_config.json").read_text() == '{"add_bos_token": true}'
    assert (out / "generation_config.json").read_text() == '{"eos_token_id": 2, "temperature": 0.7}'

"""Training a LLaMA-style SentencePiece BPE tokenizer on the same inputs ``preprocess`` reads."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from llama_data.corpus import ReadOptions, ReadStats, find_input_files, iter_texts
from llama_data.errors import DataError
from llama_data.fileio import write_atomically
from llama_data.tokenizer import optional_import

# The settings of the LLaMA-1/2 tokenizer (read from its model's trainer_spec): BPE with byte
# fallback so that no text is ever <unk>, digits split one by one, whitespace kept verbatim.
LLAMA_TRAINER_SPEC = dict(
    model_type="bpe",
    byte_fallback=True,
    split_digits=True,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=True,
    allow_whitespace_only_pieces=True,
    split_by_unicode_script=True,
    split_by_whitespace=True,
    max_sentencepiece_length=16,
    shuffle_input_sentence=True,
)
# SentencePiece drops training sentences longer than this many bytes (its default is 4192).
MAX_SENTENCE_BYTES = 16384


def train_tokenizer(
    inputs: Sequence[str | os.PathLike],
    out_prefix: str | os.PathLike,
    vocab_size: int,
    *,
    text_key: str = "text",
    txt_mode: str = "file",
    skip_bad_lines: bool = False,
    max_sentences: int = 2_000_000,
    character_coverage: float = 0.99995,
    threads: int | None = None,
    seed_sentencepiece_size: int = 1_000_000,
    overwrite: bool = False,
    json_key: str | None = None,
) -> Path:
    """Train a SentencePiece BPE model (LLaMA's settings) and write ``PREFIX.model`` + ``PREFIX.vocab``.

    Training sentences are the non-blank lines of the documents; SentencePiece samples
    ``max_sentences`` of them. ``text_key``: the jsonl key or Parquet/Arrow column of the text
    (``json_key`` is its former name). Returns the path of the ``.model`` file.
    """
    spm = optional_import("sentencepiece", "sentencepiece", "training a tokenizer")
    out_prefix = os.fspath(out_prefix)
    model_path = Path(f"{out_prefix}.model")
    vocab_path = Path(f"{out_prefix}.vocab")
    if not overwrite:
        for path in (model_path, vocab_path):
            if path.exists():
                raise DataError(f"{path} already exists (--overwrite to replace it)")
    if vocab_size < 300:
        raise DataError(
            f"--vocab-size {vocab_size} is too small: byte fallback alone needs 259 ids"
        )
    files = find_input_files(inputs)
    stats = ReadStats()
    sentences = _Sentences(
        iter_texts(
            files,
            ReadOptions(json_key if json_key is not None else text_key, txt_mode, skip_bad_lines),
            stats,
        )
    )
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            character_coverage=character_coverage,
            input_sentence_size=max_sentences,
            seed_sentencepiece_size=seed_sentencepiece_size,
            max_sentence_length=MAX_SENTENCE_BYTES,
            num_threads=threads or os.cpu_count() or 1,
            minloglevel=2,
            **LLAMA_TRAINER_SPEC,
        )
    except RuntimeError as exc:
        sentences.reraise()
        if stats.documents == 0:
            raise DataError(f"no documents in the input ({len(files)} files)") from None
        raise DataError(
            f"SentencePiece training failed: {str(exc).strip().splitlines()[0]}"
        ) from None
    sentences.reraise()
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    # The .vocab file SentencePiece itself writes: "piece<TAB>score", scores as C++ streams print them.
    vocab_text = "".join(
        f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n"
        for i in range(processor.vocab_size())
    )
    os.makedirs(model_path.parent, exist_ok=True)
    write_atomically(vocab_path, vocab_text.encode("utf-8"))
    write_atomically(model_path, model.getvalue())
    return model_path


class _Sentences:
    """The non-blank lines of the documents. An error while reading ends the iteration and is kept
    for ``reraise``: an exception raised inside SentencePiece's C++ trainer would lose its type."""

    def __init__(self, texts: Iterator[str]):
        self._texts = texts
        self._error: BaseException | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for text in self._texts:
                for line in text.split("\n"):
                    line = line.rstrip("\r")
                    if line and not line.isspace():
                        yield line
        except (DataError, OSError) as exc:
            self._error = exc

    def reraise(self) -> None:
        if self._error is not None:
            raise self._error

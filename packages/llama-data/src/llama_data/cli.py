"""The ``llama-data`` command line."""

from __future__ import annotations

import json
import os

import click

from llama_data.errors import DataError
from llama_data.version import __version__


class _UserError(click.ClickException):
    exit_code = 2


def _one_line_usage_error(exc: click.UsageError) -> _UserError:
    """A usage error (unknown option, missing argument, bad value) as one ``Error:`` line, the help
    hint folded in, instead of click's usage, hint, blank line and error. The same rule as the other
    commands' (llama-ckpt-tools' ``clikit``, which this package does not depend on)."""
    message = " ".join(exc.format_message().split())
    ctx = exc.ctx
    if ctx is not None and ctx.help_option_names:
        end = "" if message.endswith((".", "?", "!")) else "."
        message += f"{end} Try '{ctx.command_path} {max(ctx.help_option_names, key=len)}'."
    return _UserError(message)


# click >= 8.2 signals "no arguments: show the help" with a UsageError; the help stays whole.
_HELP_ON_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _Group(click.Group):
    """Turns a DataError raised by any subcommand into ``Error: <message>`` and exit code 2, and a
    usage error (the group's or a subcommand's) into one such line."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _HELP_ON_NO_ARGS:
            raise
        except click.UsageError as exc:
            raise _one_line_usage_error(exc) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DataError as exc:
            raise _UserError(str(exc)) from None
        except _HELP_ON_NO_ARGS:
            raise
        except click.UsageError as exc:
            raise _one_line_usage_error(exc) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llama-data")
def main() -> None:
    """Tokenized datasets for LLaMA pretraining: preprocess raw text into the Megatron-LM /
    PaddleNLP .bin/.idx format, train a tokenizer, merge and inspect datasets."""


_TOKENIZER_HELP = (
    "A SentencePiece .model, a tokenizer.json, a directory holding tokenizer.model or tokenizer.json, "
    "or 'byte' (UTF-8 bytes, no file needed)."
)
_INPUT_HELP = (
    "A .jsonl, .jsonl.zst, .jsonl.gz, .parquet, .arrow or .txt file, a directory (searched "
    "recursively; a datasets save_to_disk directory is one of .arrow files) or a glob pattern; "
    "repeat for more. Files are read in the order given, those of a directory or pattern sorted by "
    "path."
)
_TEXT_KEY_HELP = "The jsonl key or the Parquet/Arrow column holding the text."
_TXT_MODE_HELP = (
    "How a .txt file splits into documents: the whole file, paragraphs separated by blank lines, or "
    "one document per line."
)


class _Workers(click.ParamType):
    """A number of processes of at least 1, or 'auto'."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if value == "auto" or isinstance(value, int):
            return value
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            self.fail(f"{value!r} is neither a whole number of at least 1 nor 'auto'.", param, ctx)
        return number


_WORKERS = _Workers()


@main.command()
@click.option("--input", "inputs", multiple=True, required=True, help=_INPUT_HELP)
@click.option("--output-prefix", required=True, help="Writes PREFIX.bin and PREFIX.idx.")
@click.option("--tokenizer", required=True, help=_TOKENIZER_HELP)
@click.option("--text-key", "--json-key", default="text", show_default=True, help=_TEXT_KEY_HELP)
@click.option(
    "--append-eos/--no-append-eos",
    default=True,
    show_default=True,
    help="End every document with EOS.",
)
@click.option(
    "--prepend-bos/--no-prepend-bos",
    default=False,
    show_default=True,
    help="Start every document with BOS.",
)
@click.option(
    "--workers",
    default="1",
    show_default=True,
    type=_WORKERS,
    help="Tokenizing processes, one core each; 'auto': the cores this process may use.",
)
@click.option(
    "--skip-bad-lines",
    is_flag=True,
    help="Skip and count malformed jsonl lines and null Parquet/Arrow texts instead of stopping.",
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "uint16", "int32"]),
    default="auto",
    show_default=True,
    help="Token dtype; auto: uint16 for a vocabulary below 65,536, else int32.",
)
@click.option(
    "--txt-mode",
    type=click.Choice(["file", "paragraph", "line"]),
    default="file",
    show_default=True,
    help=_TXT_MODE_HELP,
)
@click.option("--overwrite", is_flag=True, help="Replace an existing PREFIX.bin/.idx.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar (default: when stderr is a terminal).",
)
def preprocess(
    inputs,
    output_prefix,
    tokenizer,
    text_key,
    append_eos,
    prepend_bos,
    workers,
    skip_bad_lines,
    dtype,
    txt_mode,
    overwrite,
    progress,
):
    """Tokenize raw text into PREFIX.bin + PREFIX.idx, one document per jsonl line, Parquet or
    Arrow row, or txt unit.

    The output is identical for any --workers. Nothing is written under PREFIX unless it succeeds.

    \b
    Example:
      llama-data preprocess --input corpus/ --output-prefix data/corpus \\
          --tokenizer tokenizer.model --workers auto
    """
    from llama_data.preprocessing import preprocess as run

    result = run(
        inputs,
        output_prefix,
        tokenizer,
        text_key=text_key,
        append_eos=append_eos,
        prepend_bos=prepend_bos,
        workers=workers,
        skip_bad_lines=skip_bad_lines,
        dtype=dtype,
        txt_mode=txt_mode,
        overwrite=overwrite,
        progress=progress,
    )
    click.echo(f"documents   {result.documents:,} from {result.files:,} files")
    if result.empty_documents:
        click.echo(f"skipped     {result.empty_documents:,} empty documents")
    if result.bad_lines:
        click.echo(
            f"skipped     {result.bad_lines:,} bad lines or rows (first: {result.first_bad_line})"
        )
    click.echo(f"tokens      {result.tokens:,} ({result.dtype}, vocab {result.vocab_size:,})")
    click.echo(
        f"read        {result.bytes_in / 1e6:,.1f} MB in {result.elapsed_s:.1f} s ({result.mb_per_s:,.2f} MB/s, {result.workers} workers)"
    )
    click.echo(f"wrote       {', '.join(result.outputs)}")


@main.command("train-tokenizer")
@click.option("--input", "inputs", multiple=True, required=True, help=_INPUT_HELP)
@click.option("--output-prefix", required=True, help="Writes PREFIX.model and PREFIX.vocab.")
@click.option(
    "--vocab-size", required=True, type=click.IntRange(min=1), help="Pieces in the vocabulary."
)
@click.option("--text-key", "--json-key", default="text", show_default=True, help=_TEXT_KEY_HELP)
@click.option(
    "--txt-mode",
    type=click.Choice(["file", "paragraph", "line"]),
    default="file",
    show_default=True,
    help=_TXT_MODE_HELP,
)
@click.option(
    "--skip-bad-lines", is_flag=True, help="Skip malformed jsonl lines instead of stopping."
)
@click.option(
    "--max-sentences",
    default=2_000_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Lines sampled for training (SentencePiece's input_sentence_size).",
)
@click.option(
    "--character-coverage", default=0.99995, show_default=True, type=click.FloatRange(0.9, 1.0)
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Training threads [default: all cores].",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing PREFIX.model/.vocab.")
def train_tokenizer(
    inputs,
    output_prefix,
    vocab_size,
    text_key,
    txt_mode,
    skip_bad_lines,
    max_sentences,
    character_coverage,
    threads,
    overwrite,
):
    """Train a SentencePiece BPE tokenizer with LLaMA's settings (byte fallback, split digits,
    unk 0 / bos 1 / eos 2) on the non-blank lines of the documents.

    \b
    Example:
      llama-data train-tokenizer --input corpus/ --output-prefix tok --vocab-size 32000
    """
    from llama_data.tokenizer_training import train_tokenizer as run

    path = run(
        inputs,
        output_prefix,
        vocab_size,
        text_key=text_key,
        txt_mode=txt_mode,
        skip_bad_lines=skip_bad_lines,
        max_sentences=max_sentences,
        character_coverage=character_coverage,
        threads=threads,
        overwrite=overwrite,
    )
    click.echo(f"wrote {path} and {os.path.splitext(path)[0]}.vocab")


@main.command()
@click.argument("prefixes", nargs=-1, required=True)
@click.option("--output-prefix", required=True, help="Writes PREFIX.bin and PREFIX.idx.")
@click.option("--overwrite", is_flag=True, help="Replace an existing PREFIX.bin/.idx.")
def merge(prefixes, output_prefix, overwrite):
    """Concatenate datasets PREFIXES (same dtype) into one, documents in the order given.

    \b
    Example:
      llama-data merge part1 part2 part3 --output-prefix all
    """
    from llama_data.indexed_dataset import data_path, index_path, merge_datasets

    if not overwrite:
        for path in (data_path(output_prefix), index_path(output_prefix)):
            if path.exists():
                raise DataError(f"{path} already exists (--overwrite to replace it)")
    ds = merge_datasets(prefixes, output_prefix)
    click.echo(
        f"merged {len(prefixes)} datasets: {len(ds):,} sequences, {ds.num_docs:,} documents, "
        f"{ds.num_tokens:,} tokens -> {ds.bin_path}, {ds.idx_path}"
    )


@main.command()
@click.argument("prefix")
@click.option("--tokenizer", help=f"Decode the samples with this tokenizer. {_TOKENIZER_HELP}")
@click.option(
    "--sample",
    "samples",
    multiple=True,
    type=int,
    help="Show sequence I (repeatable; negative counts from the end).",
)
@click.option(
    "--check-vocab", type=click.IntRange(min=1), help="Fail unless every token id is below N."
)
@click.option(
    "--max-chars",
    default=1000,
    show_default=True,
    type=click.IntRange(min=0),
    help="Cut decoded samples to this many characters (0: whole).",
)
@click.option(
    "--max-ids",
    default=32,
    show_default=True,
    type=click.IntRange(min=0),
    help="Token ids shown per sample (0: all).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(prefix, tokenizer, samples, check_vocab, max_chars, max_ids, as_json):
    """Counts, file sizes and token statistics of PREFIX.bin/.idx; decode samples with --tokenizer.

    \b
    Example:
      llama-data inspect data/corpus --tokenizer tokenizer.model --sample 0 --sample -1
    """
    from llama_data.indexed_dataset import IndexedDataset
    from llama_data.summary import format_report, summarize
    from llama_data.tokenizer import load_tokenizer

    ds = IndexedDataset(prefix)
    tok = load_tokenizer(tokenizer) if tokenizer else None
    report = summarize(ds, tok, samples, max_chars=max_chars, max_ids=max_ids)
    if check_vocab is not None:
        ds.check_vocab(check_vocab)
        report["vocab_check"] = {"vocab_size": check_vocab, "ok": True}
    click.echo(
        json.dumps(report, indent=2, ensure_ascii=False) if as_json else format_report(report)
    )


from llama_data.samples_cli import samples  # noqa: E402  (its own module, registered here)

main.add_command(samples)

if __name__ == "__main__":
    main()

"""The ``llama-infer`` command: one prompt, a JSONL file of prompts, or an interactive session
(``llama-infer [generate] --model ...``); and ``llama-infer export`` to static inference programs."""

from __future__ import annotations

import json
import math
import os
import sys

import click

from llama_ckpt import CheckpointError
from llama_ckpt.clikit import HELP_OPTIONS as HELP
from llama_ckpt.clikit import (
    Failure,
    default_command_group,
    quiet_third_party_warnings,
    user_errors,
)
from llama_data import DataError
from llama_infer.errors import InferError
from llama_infer.sampling import STRATEGIES
from llama_infer.version import __version__


def _user_error_types() -> tuple:
    # llama-model's error type only if it is loaded: serving an export never imports llama-model.
    types = [InferError, CheckpointError, DataError]
    if "llama_model" in sys.modules:
        types.append(sys.modules["llama_model"].LlamaModelError)
    return tuple(types)


_user_errors = user_errors(_user_error_types)


def read_prompts(path: str) -> list[dict]:
    """JSONL records, each with a non-empty string ``src``."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InferError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("src"), str):
                raise InferError(f'{path}:{number}: expected an object with a string "src" field')
            if not record["src"].strip():
                raise InferError(f"{path}:{number}: empty prompt")
            records.append(record)
    if not records:
        raise InferError(f"{path}: no prompt in it")
    return records


def write_jsonl(path: str, records: list[dict]) -> None:
    """Written under a temporary name in the same directory, then renamed: never half a file."""
    from llama_ckpt.atomic import write_atomic

    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _stream_one(gen, prompt: str, options: dict) -> None:
    for piece in gen.stream(prompt, **options):
        click.echo(piece, nl=False)
        sys.stdout.flush()
    click.echo()


def run_interactive(gen, options: dict, tty: bool) -> None:
    """Read a prompt per line until EOF (or 'exit'); stream each completion."""
    if tty:
        click.echo("Type a prompt and press Enter; Ctrl-D or 'exit' quits.", err=True)
    while True:
        if tty:
            click.echo(">>> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line:
            break
        prompt = line.rstrip("\n")
        if prompt.strip() in ("exit", "quit"):
            break
        if not prompt.strip():
            continue
        try:
            _stream_one(gen, prompt, options)
        except InferError as exc:  # a bad prompt does not end the session
            click.echo(f"Error: {exc}", err=True)
        except KeyboardInterrupt:
            click.echo()


class FiniteFloat(click.ParamType):
    """A float option that refuses inf and nan at parsing (one line, exit 2): an infinite
    temperature or penalty would turn every logit into 0 or -inf."""

    name = "float"

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a valid float.", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


FINITE_FLOAT = FiniteFloat()


def _allow_pickle_is_gone(ctx, param, value):
    if value:
        raise Failure(
            "--allow-pickle is gone (llama-infer 0.6.0 was the last to take it): a .pdparams is "
            "read by llama-ckpt-tools' restricted reader, which runs no code, as a checkpoint's "
            "pickles always were, so it loads without the option; drop it"
        )


# Shared by generate and export: the option that once let a .pdparams through, kept only to say so.
ALLOW_PICKLE = click.option(
    "--allow-pickle",
    is_flag=True,
    hidden=True,
    expose_value=False,
    callback=_allow_pickle_is_gone,
)


# generate is the command people type most, and it predates export.
@click.group(cls=default_command_group("generate"), context_settings=HELP)
@click.version_option(__version__, prog_name="llama-infer")
def main():
    """Generate text with a LLaMA model, or export it to static inference programs.

    \b
    llama-infer --model llama-dir --prompt "To be"     # generate is the default command
    llama-infer generate --help                         # every generation option
    llama-infer export --model llama-dir --output llama-export
    """
    # Paddle's C++ warnings (glog), unless the user sets the level: exporting prints "Paddle static
    # graph(PIR) not support input out tensor for now!!!!!" about its own to_static internals.
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        from llama_model.runtime import configure_runtime
    except ImportError:  # the static path (an export directory) runs without llama-model
        pass
    else:
        configure_runtime(pin_threads=True)  # before Paddle loads: see llama-model's runtime module

    quiet_third_party_warnings()  # Paddle loads after this point: `import llama_infer` does not


@main.command(context_settings=HELP)
@click.option(
    "--model",
    "model_path",
    required=True,
    help="Model directory (paddle or hf layout), training checkpoint or run directory, or an "
    "export directory (llama-infer export): then Paddle's inference engine runs it.",
)
@click.option(
    "--tokenizer",
    default=None,
    help="SentencePiece .model, tokenizer.json, a directory holding one, or 'byte' [default: the model directory's].",
)
@click.option("--prompt", multiple=True, help="A prompt to complete (repeat for several).")
@click.option(
    "--input-file",
    type=click.Path(dir_okay=False),
    default=None,
    help='JSONL file of prompts, one {"src": ...} per line.',
)
@click.option(
    "--output-file",
    type=click.Path(dir_okay=False),
    default=None,
    help='Write results as JSONL here (the input records plus "output") instead of stdout.',
)
@click.option(
    "--interactive",
    is_flag=True,
    help="Read prompts line by line (the default when no prompt is given on a terminal).",
)
@click.option(
    "--decode-strategy", type=click.Choice(STRATEGIES), default="greedy", show_default=True
)
@click.option("--temperature", type=FINITE_FLOAT, default=1.0, show_default=True)
@click.option(
    "--top-k",
    type=int,
    default=0,
    show_default=True,
    help="Keep the k most likely tokens (0: off).",
)
@click.option(
    "--top-p",
    type=FINITE_FLOAT,
    default=1.0,
    show_default=True,
    help="Nucleus sampling mass (1.0: off).",
)
@click.option("--repetition-penalty", type=FINITE_FLOAT, default=1.0, show_default=True)
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--stop", multiple=True, help="Stop a completion at this string (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampling draws.")
@click.option(
    "--batch-size", type=int, default=1, show_default=True, help="Prompts decoded together."
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default=None,
    help="Weights' dtype [default: float32; an export directory keeps the dtype it was exported with].",
)
@click.option(
    "--add-bos/--no-add-bos",
    default=None,
    help="Start prompts with BOS [default: as tokenizer_config.json says, else no].",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads [default: one per physical core this process may use; hyper-threads add nothing].",
)
@ALLOW_PICKLE
@click.option(
    "--stream/--no-stream",
    default=True,
    show_default=True,
    help="Print a single prompt's tokens as they come.",
)
@_user_errors
def generate(
    model_path, tokenizer, prompt, input_file, output_file, interactive, decode_strategy, temperature,
    top_k, top_p, repetition_penalty, max_new_tokens, stop, seed, batch_size, dtype, add_bos, threads,
    stream,
):  # fmt: skip
    """Generate text with a LLaMA model (the default command).

    \b
    llama-infer --model llama-dir --prompt "To be, or not to be"
    llama-infer --model llama-export --prompt "..."    # an export: static programs
    llama-infer --model out/checkpoints/step-00001000 --tokenizer tok.model --prompt "..."
    llama-infer --model llama-dir --input-file prompts.jsonl --output-file out.jsonl --batch-size 8
    llama-infer --model llama-dir --decode-strategy sampling --top-p 0.9 --temperature 0.8
    llama-infer --model llama-dir            # on a terminal: an interactive session
    """
    tty = sys.stdin.isatty()
    if prompt and input_file:
        raise InferError("give --prompt or --input-file, not both")
    if not (prompt or input_file or interactive or tty):
        raise InferError("nothing to do: give --prompt, --input-file or --interactive")
    records = read_prompts(input_file) if input_file else [{"src": p} for p in prompt]
    if any(not r["src"].strip() for r in records):
        raise InferError("empty prompt: give some text to continue")
    if output_file and not records:
        raise InferError("--output-file needs --prompt or --input-file")
    if batch_size < 1:
        raise InferError(f"--batch-size must be >= 1, got {batch_size}")
    options = dict(
        max_new_tokens=max_new_tokens, decode_strategy=decode_strategy, temperature=temperature,
        top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, stop=stop, seed=seed,
    )  # fmt: skip
    # Checked before the (slow) model load, so a bad option fails at once.
    from llama_infer.generation import Generator, check_dtype
    from llama_infer.manifest import is_export
    from llama_infer.sampling import SamplingConfig

    if dtype is not None and not is_export(model_path):  # an export's dtype is checked on opening
        check_dtype(dtype)
    SamplingConfig(decode_strategy, temperature, top_k, top_p, repetition_penalty)
    gen = Generator(
        model_path,
        tokenizer,
        dtype=dtype,
        add_bos=add_bos,
        threads=threads,
    )
    gen._require_tokenizer()
    if not records:
        run_interactive(gen, options, tty)
        return
    if len(records) == 1 and stream and not output_file:
        _stream_one(gen, records[0]["src"], options)
        return
    results = _generate_all(gen, records, batch_size, options)
    if output_file:
        write_jsonl(output_file, results)
        click.echo(f"wrote {len(results)} completions to {output_file}", err=True)
    else:
        for record in results:
            click.echo(json.dumps(record, ensure_ascii=False))


def _generate_all(gen, records: list[dict], batch_size: int, options: dict) -> list[dict]:
    from tqdm import tqdm

    prompts = [gen.encode(r["src"]) for r in records]  # every prompt checked before any decoding
    out = []
    with tqdm(total=len(records), unit="prompt", disable=None, file=sys.stderr) as bar:
        for start in range(0, len(records), batch_size):
            chunk = gen.generate_ids(
                prompts[start : start + batch_size], batch_size=batch_size, **options
            )
            for record, completion in zip(records[start : start + batch_size], chunk):
                out.append(
                    {**record, "output": completion.text, "finish_reason": completion.finish_reason}
                )
            bar.update(len(chunk))
    return out


@main.command(context_settings=HELP)
@click.option(
    "--model",
    "model_path",
    required=True,
    help="Model directory (paddle or hf layout), training checkpoint or run directory.",
)
@click.option(
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Export directory to create (programs, parameters, config.json, tokenizer files).",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="Dtype of the exported weights and caches (bfloat16/float16 need a GPU build).",
)
@click.option(
    "--max-seq-len",
    type=int,
    default=None,
    help="Cache capacity in tokens (prompt + new tokens) [default: the model's context].",
)
@click.option(
    "--tokenizer",
    default=None,
    help="Tokenizer file or directory to ship in the export [default: the model directory's].",
)
@click.option(
    "--portable",
    is_flag=True,
    help="Plain Paddle operators only: programs any Paddle build serves, a GPU one included, "
    "without llama-ops (slower on a CPU). By default a float32 export made on a CPU with llama-ops "
    "installed runs each decoder layer as one llama-ops kernel, and serving it needs llama-ops.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing export directory.")
@ALLOW_PICKLE
@_user_errors
def export(model_path, output, dtype, max_seq_len, tokenizer, portable, overwrite):
    """Export a model's prefill and decode steps as Paddle inference programs.

    \b
    llama-infer export --model llama-dir --output llama-export --max-seq-len 512
    llama-infer --model llama-export --prompt "To be, or not to be"
    """
    from llama_infer.export import export_model
    from llama_infer.generation import check_dtype
    from llama_infer.loading import load_model
    from llama_model import kernels

    check_dtype(dtype)
    if os.path.exists(output) and not overwrite:
        raise InferError(f"{output} exists; remove it or pass --overwrite")
    loaded = load_model(model_path, dtype=dtype)
    manifest = export_model(
        loaded.model,
        output,
        capacity=max_seq_len,
        tokenizer=tokenizer or loaded.directory,
        overwrite=overwrite,
        portable=portable,
    )
    shipped = [f for f in os.listdir(output) if f.startswith(("tokenizer", "special_tokens"))]
    if manifest["custom_ops"]:
        ops = "llama-ops' fused decoder layers (serving needs llama-ops; --portable for none)"
    elif portable:
        ops = "plain Paddle operators (portable)"
    else:
        ops = f"plain Paddle operators ({kernels.fused_layers_available(manifest['dtype'])})"
    click.echo(
        f"exported {manifest['num_layers']}-layer model ({manifest['dtype']}, cache capacity "
        f"{manifest['capacity']} tokens) to {output}: programs "
        f"{', '.join(p['program'] for p in manifest['programs'].values())} with {ops}"
        + (f"; tokenizer {', '.join(sorted(shipped))}" if shipped else "; no tokenizer files"),
        err=True,
    )


if __name__ == "__main__":
    main()

"""The `llama-ckpt` command line: merge, export, inspect, verify."""

from __future__ import annotations

import json
import sys

import click

from . import dtypes, layouts
from .clikit import HELP_OPTIONS, Group, user_errors
from .describe import describe, format_text, human_bytes
from .errors import CheckpointError
from .export import export
from .merge import merge
from .verify import compare
from .version import __version__

PREFIX_HELP = (
    "Key group of a distributed checkpoint to read: 'model' (default when the checkpoint "
    "has model./optimizer. keys, else every key), 'optimizer', or '' for every key as is."
)


_user_errors = user_errors(lambda: (CheckpointError,))


def _source_options(fn):
    fn = click.option(
        "--unique-id",
        type=int,
        default=None,
        help="Which save in the directory ({rank}_{id}.distcp); default the newest.",
    )(fn)
    return click.option("--prefix", default=None, help=PREFIX_HELP)(fn)


@click.group(cls=Group, context_settings=HELP_OPTIONS)
@click.version_option(__version__, prog_name="llama-ckpt")
def main() -> None:
    """Merge, convert, inspect and compare LLaMA checkpoints saved by Paddle, without Paddle."""


@main.command("merge")
@click.argument("ckpt_dir", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@_source_options
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@_user_errors
def merge_cmd(ckpt_dir, out, prefix, unique_id, overwrite):
    """Assemble every tensor of a distributed checkpoint into OUT (.pdparams or .safetensors).

    \b
    llama-ckpt merge output/checkpoints/step-00001000 model.pdparams
    llama-ckpt merge output/checkpoints/step-00001000 model.safetensors
    """
    r = merge(ckpt_dir, out, prefix=prefix, unique_id=unique_id, overwrite=overwrite, progress=True)
    click.echo(f"wrote {r.path}: {r.tensors} tensors, {human_bytes(r.nbytes)}")


@main.command("export")
@click.argument("src", type=click.Path())
@click.argument("out_dir", type=click.Path(dir_okay=True, file_okay=False))
@click.option(
    "--layout",
    type=click.Choice(layouts.LAYOUTS),
    default=layouts.PADDLE,
    show_default=True,
    help="paddle: PaddleNLP names, Linear [in, out]; hf: transformers names, Linear [out, in].",
)
@click.option(
    "--max-shard-size",
    default="5GB",
    show_default=True,
    help="Largest shard, in bytes (5GB, 500MB, 2GiB).",
)
@click.option(
    "--split-num", type=int, default=None, help="Cut into N shards of about equal bytes instead."
)
@click.option(
    "--dtype",
    type=click.Choice(dtypes.CAST_TARGETS),
    default=None,
    help="Cast floating tensors (integers are left alone).",
)
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    default=None,
    help="config.json to ship (default: the one next to SRC).",
)
@_source_options
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
@_user_errors
def export_cmd(
    src, out_dir, layout, max_shard_size, split_num, dtype, config, prefix, unique_id, overwrite
):
    """Write a model directory (safetensors shards, index, config.json) from SRC.

    SRC is a distributed checkpoint directory, a .pdparams file, a .safetensors file or a model
    directory.

    \b
    llama-ckpt export output/checkpoints/step-00001000 llama-paddle
    llama-ckpt export output/checkpoints/step-00001000 llama-hf --layout hf --dtype bfloat16
    """
    r = export(
        src,
        out_dir,
        layout=layout,
        max_shard_size=max_shard_size,
        split_num=split_num,
        dtype=dtype,
        config=config,
        prefix=prefix,
        unique_id=unique_id,
        overwrite=overwrite,
        progress=True,
    )
    click.echo(
        f"wrote {r.path}: {r.tensors} tensors, {human_bytes(r.nbytes)} in {len(r.files)} file(s)"
    )


@main.command("inspect")
@click.argument("path", type=click.Path())
@_source_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_user_errors
def inspect_cmd(path, prefix, unique_id, as_json):
    """Keys, shapes, dtypes, sizes and (for a distributed checkpoint) which ranks hold what.

    \b
    llama-ckpt inspect output/checkpoints/step-00001000
    llama-ckpt inspect llama-hf --json
    """
    info = describe(path, prefix=prefix, unique_id=unique_id)
    click.echo(json.dumps(info, indent=2) if as_json else format_text(info))


@main.command("verify")
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option("--rtol", type=float, default=0.0, show_default=True, help="Relative tolerance.")
@click.option("--atol", type=float, default=0.0, show_default=True, help="Absolute tolerance.")
@_source_options
@_user_errors
def verify_cmd(a, b, rtol, atol, prefix, unique_id):
    """Compare A and B tensor by tensor (bit for bit unless given a tolerance); exit 1 if they differ.

    Any two of: distributed checkpoint, .pdparams, .safetensors, model directory (either layout).

    \b
    llama-ckpt verify output/checkpoints/step-00001000 llama-hf
    llama-ckpt verify model.pdparams llama-bf16 --rtol 1e-2 --atol 1e-3
    """
    r = compare(a, b, rtol=rtol, atol=atol, prefix=prefix, unique_id=unique_id)
    for name in r.only_in_a:
        click.echo(f"only in A: {name}")
    for name in r.only_in_b:
        click.echo(f"only in B: {name}")
    for d in r.differences:
        extra = f" (max |a-b| = {d.max_abs_diff:.3e})" if d.max_abs_diff is not None else ""
        click.echo(f"differs: {d.name}: {d.reason}{extra}")
    if r.equal:
        click.echo(f"equal: {r.compared} tensors")
    else:
        click.echo(
            f"NOT equal: {len(r.differences)} of {r.compared} tensors differ, "
            f"{len(r.only_in_a)} only in A, {len(r.only_in_b)} only in B"
        )
        sys.exit(1)

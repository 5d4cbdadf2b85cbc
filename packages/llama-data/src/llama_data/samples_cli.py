"""``llama-data samples``: build (or load) the GPT sample indices ahead of training and summarise them."""

from __future__ import annotations

import json

import click


@click.command("samples")
@click.option(
    "--data",
    required=True,
    help="One dataset prefix, or a weighted blend: '0.7 data/web 0.3 data/code'.",
)
@click.option(
    "--seq-len",
    required=True,
    type=click.IntRange(min=1),
    help="Tokens per sample (the model's context).",
)
@click.option(
    "--num-samples",
    required=True,
    type=click.IntRange(min=0),
    help="Training samples (global batch x steps).",
)
@click.option(
    "--valid-samples",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Validation samples (0: none).",
)
@click.option(
    "--test-samples",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Test samples (0: none).",
)
@click.option(
    "--split",
    default="949,50,1",
    show_default=True,
    help="Documents per train,valid,test (weights).",
)
@click.option("--seed", default=1234, show_default=True, type=int, help="Shuffling seed.")
@click.option(
    "--cache-dir",
    default=None,
    help="Where the index files go (default: index-cache/ beside each dataset).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def samples(
    data, seq_len, num_samples, valid_samples, test_samples, split, seed, cache_dir, as_json
):
    """Build the shuffled sample indices of each split once, so training starts without waiting.

    Indices land in files named by a hash of everything that determines them; a later run with the
    same arguments (this command or training) reads them instead of building.

    \b
    Examples:
      llama-data samples --data data/corpus --seq-len 2048 --num-samples 1000000
      llama-data samples --data "0.7 data/web 0.3 data/code" --seq-len 4096 \\
          --num-samples 500000 --valid-samples 2000 --split 98,2,0
    """
    from llama_data.blending import BlendedDataset, build_gpt_datasets

    datasets = build_gpt_datasets(
        data,
        seq_len=seq_len,
        num_samples=(num_samples, valid_samples, test_samples),
        split=split,
        seed=seed,
        cache_dir=cache_dir,
        rank=0,  # this command is the builder
    )
    summary = {}
    for which, ds in datasets.items():
        if ds is None:
            continue
        parts = ds.datasets if isinstance(ds, BlendedDataset) else [ds]
        entry = {
            "samples": len(ds),
            "datasets": [
                {
                    "prefix": p.prefix,
                    "documents": list(p.documents),
                    "tokens_per_epoch": p.tokens_per_epoch,
                    "requested": p.num_samples,
                    "available": len(p),
                    "epochs": p.num_epochs,
                    "built": p.built,
                    "cache": str(p.cache_files.get("meta", "")),
                }
                for p in parts
            ],
        }
        if isinstance(ds, BlendedDataset):
            entry["blend"] = {
                "weights": [float(w) for w in ds.weights],
                "counts": [int(c) for c in ds.counts],
                "built": ds.built,
                "cache": str(ds.cache_files.get("meta", "")),
            }
        summary[which] = entry
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for which, entry in summary.items():
        click.echo(f"{which}: {entry['samples']:,} samples of {seq_len + 1} tokens")
        blend = entry.get("blend")
        for k, part in enumerate(entry["datasets"]):
            first, last = part["documents"]
            share = (
                f"  weight {blend['weights'][k]:.4f}, {blend['counts'][k]:,} in blend"
                if blend
                else ""
            )
            click.echo(
                f"  {part['prefix']}: documents [{first:,}, {last:,}), {part['tokens_per_epoch']:,} "
                f"tokens/epoch, {part['epochs']} epoch(s), {part['available']:,} samples{share}"
            )
            click.echo(f"    {'built' if part['built'] else 'cached'}: {part['cache']}")
        if blend:
            click.echo(f"  blend {'built' if blend['built'] else 'cached'}: {blend['cache']}")

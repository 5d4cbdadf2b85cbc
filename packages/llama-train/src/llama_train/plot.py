"""``llama-train plot OUTPUT [OUTPUT ...]``: the curves of one run or several on one figure, as a PNG.

Panels: loss (train lines, valid points), learning rate, tokens/s, and peak memory when the records
hold it (runs from before it was logged have none). Each run keeps one colour across the panels and
is named by its directory.
"""

from __future__ import annotations

from pathlib import Path

from llama_ckpt.atomic import atomic_output
from llama_train.errors import TrainError
from llama_train.metrics import read_metrics


def _records(output: str) -> tuple[list[dict], list[dict]]:
    try:
        records = read_metrics(output)
    except FileNotFoundError:
        raise TrainError(
            f"{output}: no metrics.jsonl (is it a llama-train output directory?)"
        ) from None
    train = [r for r in records if r.get("split") == "train"]
    if not train:
        raise TrainError(f"{output}/metrics.jsonl holds no training steps yet")
    return train, [r for r in records if r.get("split") == "valid"]


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_runs(outputs: list[str], png: str | None = None) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TrainError("plotting needs matplotlib: pip install 'llama-train[plot]'") from None
    runs = [(Path(o).resolve().name, *_records(o)) for o in outputs]
    if png:
        target = Path(png)
    else:
        target = Path(outputs[0]) / "curves.png" if len(outputs) == 1 else Path("curves.png")
    panels = [("loss", 3), ("learning rate", 1), ("tokens/s", 1)]
    with_memory = any(r.get("peak_memory_gib") is not None for _, train, _ in runs for r in train)
    if with_memory:
        panels.append(("peak memory (GiB)", 1))
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(9, 2 + 1.6 * len(panels)), sharex=True,
        height_ratios=[h for _, h in panels],
    )  # fmt: skip
    several = len(runs) > 1
    for i, (name, train, valid) in enumerate(runs):
        color = f"C{i % 10}"
        prefix = f"{name}: " if several else ""
        axes[0].plot(*_series(train, "loss"), color=color, linewidth=1, label=f"{prefix}train loss")
        if valid:
            axes[0].plot(*_series(valid, "valid_loss"), "o--", color=color, markersize=4,
                         label=f"{prefix}valid loss")  # fmt: skip
        axes[1].plot(*_series(train, "lr"), color=color, linewidth=1)
        axes[2].plot(*_series(train, "tokens_per_s"), color=color, linewidth=1)
        if with_memory:
            axes[3].plot(*_series(train, "peak_memory_gib"), color=color, linewidth=1)
    for ax, (label, _) in zip(axes, panels):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    axes[-1].set_xlabel("step")
    fig.suptitle(" vs ".join(name for name, _, _ in runs))
    fig.tight_layout()
    with atomic_output(str(target), overwrite=True) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return target


def plot_run(output: str, png: str | None = None) -> Path:
    """One run's curves (``OUTPUT/curves.png`` by default)."""
    return plot_runs([output], png)

"""``llama-train plot OUTPUT``: the loss (train and valid) and learning-rate curves as a PNG."""

from __future__ import annotations

from pathlib import Path

from llama_train.errors import TrainError
from llama_train.metrics import read_metrics


def plot_run(output: str, png: str | None = None) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TrainError("plotting needs matplotlib: pip install 'llama-train[plot]'") from None
    try:
        records = read_metrics(output)
    except FileNotFoundError:
        raise TrainError(
            f"{output}: no metrics.jsonl (is it a llama-train output directory?)"
        ) from None
    train = [r for r in records if r.get("split") == "train"]
    valid = [r for r in records if r.get("split") == "valid"]
    if not train:
        raise TrainError(f"{output}/metrics.jsonl holds no training steps yet")
    target = Path(png) if png else Path(output) / "curves.png"
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1])
    ax_loss.plot(
        [r["step"] for r in train], [r["loss"] for r in train], label="train loss", linewidth=1
    )
    if valid:
        ax_loss.plot(
            [r["step"] for r in valid], [r["valid_loss"] for r in valid], "o-", label="valid loss"
        )
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_lr.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:green", linewidth=1)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.suptitle(str(Path(output).resolve().name))
    fig.tight_layout()
    tmp = target.with_name(f".{target.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(target)
    return target

"""Where each logged record goes (``--report-to``): ``metrics.jsonl`` always, and on request
TensorBoard, Weights & Biases and VisualDL, each fed by rank 0 with the same records and the run's
options as hyper-parameters.

Each tracker is an optional extra (``llama-train[tensorboard]``, ``[wandb]``, ``[visualdl]``); the
front process checks that the ones asked for can be imported before anything starts. The libraries:

* TensorBoard: ``tensorboardX`` writes the event files (it needs only numpy and protobuf, which
  Paddle brings; ``torch.utils.tensorboard`` would pull torch, ``tensorboard`` itself a server).
  They go to ``OUTPUT/tensorboard/``; a resumed run writes a purge marker at its first step, so
  TensorBoard drops the steps redone after the checkpoint, as ``metrics.jsonl`` does.
* Weights & Biases: ``wandb``, the service's own client (``WANDB_MODE=offline`` writes the run
  under ``OUTPUT/wandb/`` for a later ``wandb sync``). One W&B run per output directory: its id is
  kept in ``OUTPUT/wandb/run-id`` and a resumed job continues it.
* VisualDL: ``visualdl`` (PaddlePaddle's own tracker), ``OUTPUT/visualdl/``.
"""

from __future__ import annotations

import importlib.util
import math
import uuid
from pathlib import Path

from llama_train.errors import TrainError
from llama_train.metrics import MetricsFile

SINKS = ("jsonl", "tensorboard", "wandb", "visualdl")
# sink -> (module it needs, the extra that installs it)
_NEEDS = {"tensorboard": "tensorboardX", "wandb": "wandb", "visualdl": "visualdl"}
# Record fields that are not curves.
_NOT_SCALARS = ("step", "split", "time")


def parse_report_to(spec: str | None) -> list[str]:
    """``"jsonl,tensorboard"`` -> the sinks in a fixed order, jsonl always among them."""
    names = [n.strip() for n in (spec or "jsonl").split(",") if n.strip()]
    unknown = [n for n in names if n not in SINKS]
    if unknown:
        raise TrainError(f"--report-to: unknown sink {unknown[0]!r} (known: {', '.join(SINKS)})")
    return [n for n in SINKS if n in names or n == "jsonl"]


def check_available(sinks: list[str]) -> None:
    """Each tracker asked for can be imported; else one line naming the extra to install."""
    for sink in sinks:
        module = _NEEDS.get(sink)
        if module is not None and importlib.util.find_spec(module) is None:
            raise TrainError(
                f"--report-to {sink} needs the {module} package: pip install 'llama-train[{sink}]'"
            )


def scalars(record: dict) -> dict[str, float]:
    """The curves of a record, tagged by split: ``train/loss``, ``valid/valid_loss``, ..."""
    split = record.get("split", "train")
    out = {}
    for key, value in record.items():
        if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[f"{split}/{key}"] = float(value)
    return out


class Reporter:
    """The run's sinks (rank 0): ``write(record)`` to all of them, ``close()`` at the end."""

    def __init__(self, output: str, report_to: str, resume_step: int | None, hparams: dict):
        self.metrics = MetricsFile(output, resume_step)
        self.trackers = []
        try:
            for sink in parse_report_to(report_to):
                if sink != "jsonl":
                    self.trackers.append(_start(sink, Path(output), resume_step, hparams))
        except BaseException:
            self.close()
            raise

    def write(self, record: dict) -> None:
        self.metrics.write(record)
        values = scalars(record)
        for tracker in self.trackers:
            tracker.log(values, record["step"])

    def close(self) -> None:
        self.metrics.close()
        for tracker in self.trackers:
            tracker.close()


def flat_hparams(options: dict) -> dict:
    """Options (by their flat names) as trackers take hyper-parameters: scalars and strings, lists
    joined, None as ''."""
    out = {}
    for key, value in options.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        elif isinstance(value, dict):
            continue
        out[key] = "" if value is None else value
    return out


class _TensorBoard:
    def __init__(self, output: Path, resume_step: int | None, hparams: dict):
        from tensorboardX import SummaryWriter

        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(logdir=str(output / "tensorboard"), purge_step=purge)
        if resume_step is None:
            self.writer.add_hparams(hparams, {}, name=".")

    def log(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, output: Path, resume_step: int | None, hparams: dict):
        import wandb

        directory = output / "wandb"
        directory.mkdir(parents=True, exist_ok=True)
        id_file = directory / "run-id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project="llama-train",  # WANDB_PROJECT / WANDB_ENTITY override it, as wandb documents
            name=output.resolve().name,
            id=run_id,
            dir=str(output),
            config=hparams,
            resume="allow",
        )

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _VisualDL:
    def __init__(self, output: Path, resume_step: int | None, hparams: dict):
        from visualdl import LogWriter

        self.writer = LogWriter(logdir=str(output / "visualdl"))
        if resume_step is None:  # VisualDL takes numbers and strings, no booleans
            values = {k: str(v) if isinstance(v, bool) else v for k, v in hparams.items()}
            self.writer.add_hparams(values, ["train/loss"])

    def log(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


_TRACKERS = {"tensorboard": _TensorBoard, "wandb": _WandB, "visualdl": _VisualDL}


def _start(sink: str, output: Path, resume_step: int | None, hparams: dict):
    """A tracker, or one line saying why it cannot start (W&B online without a login, say)."""
    try:
        return _TRACKERS[sink](output, resume_step, hparams)
    except Exception as exc:  # a third-party library's own error types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TrainError(f"--report-to {sink}: {first}") from None

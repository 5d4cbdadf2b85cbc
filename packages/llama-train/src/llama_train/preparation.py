"""Everything checked and built before any training process starts.

Options, model shape, layout against the model and the backend, the data files (existence, token
ids within the vocabulary), the sample indices (built here once, read by every rank), enough data
for the steps asked, and the output directory. A mistake here costs a second, not a launch of N
processes; the resolved options land in ``OUTPUT/run_config.json``.
"""

from __future__ import annotations

from pathlib import Path

from llama_train import checkpoint, model_setup
from llama_train.data import TrainData, check_data_files
from llama_train.errors import TrainError
from llama_train.options import RunConfig


def prepare(cfg: RunConfig) -> RunConfig:
    """Complete ``cfg`` (sequence length) and check it; raises TrainError with one line."""
    config = model_setup.model_config(cfg)
    model_setup.resolve_seq_len(cfg, config)
    strategy = model_setup.strategy_of(cfg)
    model_setup.check_layout(cfg, config, strategy)
    check_data_files(cfg, config.vocab_size)
    data = TrainData(cfg, rank=0)
    data.check_enough(cfg.max_steps)
    out = Path(cfg.output)
    if cfg.resume is None and checkpoint.latest(out / "checkpoints") is not None:
        raise TrainError(
            f"{out} already holds checkpoints: pass --resume auto to continue, or another --output"
        )
    checkpoint.resolve_resume(cfg.resume, cfg.output)  # a bad --resume path fails here
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for stale in logs.glob("error.*"):
        stale.unlink()
    (logs / "preempted").unlink(missing_ok=True)
    cfg.write(str(out / "run_config.json"))
    config.to_json(str(out / "config.json"))
    return cfg

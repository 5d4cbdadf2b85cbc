"""Pretraining LLaMA on PaddlePaddle auto-parallel: launcher, trainer loop, checkpoints, metrics."""

from llama_train.checkpoint import CheckpointManager, TrainerState, latest, resolve_resume
from llama_train.errors import NonFiniteLoss, TrainError
from llama_train.metrics import FLOPS_FORMULA, flops_per_token, read_metrics
from llama_train.options import RunConfig
from llama_train.run_record import RunRecord
from llama_train.schedule import LRSchedule
from llama_train.version import __version__
from llama_train.vetting import vet_checkpoint

__all__ = [
    "FLOPS_FORMULA",
    "CheckpointManager",
    "LRSchedule",
    "NonFiniteLoss",
    "RunConfig",
    "RunRecord",
    "TrainError",
    "TrainerState",
    "__version__",
    "flops_per_token",
    "latest",
    "read_metrics",
    "resolve_resume",
    "vet_checkpoint",
]

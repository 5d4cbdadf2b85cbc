"""`llama-ckpt merge`: one file holding every global tensor of a distributed checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

from .atomic import atomic_output, check_destination
from .distcp import DistCheckpoint
from .errors import CheckpointError
from .pdparams_io import PdparamsWriter
from .progress import bar
from .safetensors_io import SafetensorsWriter

FORMATS = {".pdparams": "pdparams", ".safetensors": "safetensors"}


@dataclass
class MergeResult:
    path: str
    tensors: int
    nbytes: int


def output_format(path: str) -> str:
    for suffix, fmt in FORMATS.items():
        if path.endswith(suffix):
            return fmt
    raise CheckpointError(f"{path}: the output name must end with .pdparams or .safetensors")


def merge(
    ckpt_dir: str,
    out: str,
    prefix: str | None = None,
    unique_id: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> MergeResult:
    """Assemble every tensor of `ckpt_dir` (one at a time) into `out` (.pdparams or .safetensors)."""
    fmt = output_format(out)
    check_destination(out, overwrite)
    ckpt = DistCheckpoint(ckpt_dir, prefix=prefix, unique_id=unique_id)
    names = ckpt.names()
    total = sum(t.nbytes for t in ckpt.tensors.values())
    with atomic_output(out, overwrite) as tmp, bar(total, "merge", progress) as pbar:
        if fmt == "safetensors":
            entries = [(n, *ckpt.info(n)) for n in names]
            writer = SafetensorsWriter(tmp, entries, metadata={"format": "np"})
        else:
            writer = PdparamsWriter(tmp)
        try:
            for name in names:
                array = ckpt.read(name)
                if fmt == "safetensors":
                    writer.write(name, array)
                else:
                    writer.write(name, array, ckpt.info(name)[0])
                pbar.update(array.nbytes)
                del array
            writer.close()
        except BaseException:
            writer.abort()
            raise
    return MergeResult(out, len(names), total)

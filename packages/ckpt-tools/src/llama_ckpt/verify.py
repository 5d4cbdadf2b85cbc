"""`llama-ckpt verify`: compare two checkpoints or model directories tensor by tensor.

Both sides are seen in the paddle layout (an hf directory is renamed and transposed back), so a
distributed checkpoint, a merged `.pdparams` and an `--layout hf` export of it compare equal.
With no tolerance the tensors must match bit for bit and in dtype; with `rtol`/`atol` they are
compared as float64 (`|a - b| <= atol + rtol * |b|`, NaN equal to NaN), dtypes may differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import dtypes
from .errors import CheckpointError
from .sources import Canonical, open_source

_CHUNK = 1 << 22  # elements compared at a time in float64


@dataclass
class Difference:
    name: str
    reason: str
    max_abs_diff: float | None = None


@dataclass
class Comparison:
    compared: int = 0
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not (self.only_in_a or self.only_in_b or self.differences)


def _as_float64(array: np.ndarray, dt: dtypes.DType) -> np.ndarray:
    if dt.name == "bfloat16":
        return dtypes.bf16_bits_to_float32(array).astype(np.float64)
    if dt.name.startswith("float8") or dt.name.startswith("complex"):
        raise ValueError
    return array.astype(np.float64)


def _max_abs_diff(a, da, b, db) -> float | None:
    try:
        fa, fb = _as_float64(a.reshape(-1), da), _as_float64(b.reshape(-1), db)
    except ValueError:
        return None
    worst = 0.0
    for i in range(0, fa.size, _CHUNK):
        d = np.abs(fa[i : i + _CHUNK] - fb[i : i + _CHUNK])
        d = d[~np.isnan(d)]
        if d.size:
            worst = max(worst, float(d.max()))
    return worst


def _close(a, da, b, db, rtol: float, atol: float) -> bool:
    fa, fb = _as_float64(a.reshape(-1), da), _as_float64(b.reshape(-1), db)
    return all(
        np.allclose(fa[i : i + _CHUNK], fb[i : i + _CHUNK], rtol=rtol, atol=atol, equal_nan=True)
        for i in range(0, fa.size, _CHUNK)
    )


def compare(
    path_a: str,
    path_b: str,
    rtol: float = 0.0,
    atol: float = 0.0,
    prefix: str | None = None,
    unique_id: int | None = None,
) -> Comparison:
    for option, value in (("rtol", rtol), ("atol", atol)):
        if not (math.isfinite(value) and value >= 0):  # inf would call any two tensors equal
            raise CheckpointError(f"{option} must be a finite number >= 0, got {value}")
    a = Canonical(open_source(path_a, prefix=prefix, unique_id=unique_id))
    b = Canonical(open_source(path_b, prefix=prefix, unique_id=unique_id))
    names_b = set(b.names())
    result = Comparison()
    result.only_in_a = [n for n in a.names() if n not in names_b]
    result.only_in_b = sorted(names_b - set(a.names()))
    exact = rtol == 0 and atol == 0
    for name in a.names():
        if name not in names_b:
            continue
        result.compared += 1
        (da, sa), (db, sb) = a.info(name), b.info(name)
        if tuple(sa) != tuple(sb):
            result.differences.append(Difference(name, f"shape {tuple(sa)} vs {tuple(sb)}"))
            continue
        if exact and da.name != db.name:
            result.differences.append(Difference(name, f"dtype {da.name} vs {db.name}"))
            continue
        xa, xb = a.read(name), b.read(name)
        if exact:
            if xa.tobytes() != xb.tobytes():
                result.differences.append(
                    Difference(name, "values differ", _max_abs_diff(xa, da, xb, db))
                )
            continue
        try:
            ok = _close(xa, da, xb, db, rtol, atol)
        except ValueError:
            ok = da.name == db.name and xa.tobytes() == xb.tobytes()
        if not ok:
            result.differences.append(
                Difference(name, "values differ beyond tolerance", _max_abs_diff(xa, da, xb, db))
            )
    return result

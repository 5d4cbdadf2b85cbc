"""The dtypes a checkpoint can hold: Paddle's names, how numpy stores them, safetensors' codes.

numpy has no bfloat16 or float8: Paddle pickles those tensors as their raw bits (uint16 / uint8),
and the true dtype lives in the checkpoint metadata. Every tensor here travels as an array of its
*storage* dtype together with the true dtype's name, so bf16 comes out as bf16 again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import CheckpointError


@dataclass(frozen=True)
class DType:
    name: str  # Paddle's name (also what metadata files and our CLI say)
    storage: np.dtype  # how the bits sit in a numpy array
    safetensors: str | None  # safetensors dtype code; None where the format has none
    is_float: bool = False

    @property
    def itemsize(self) -> int:
        return self.storage.itemsize


_TABLE = [
    DType("bool", np.dtype(np.bool_), "BOOL"),
    DType("uint8", np.dtype(np.uint8), "U8"),
    DType("int8", np.dtype(np.int8), "I8"),
    DType("int16", np.dtype(np.int16), "I16"),
    DType("uint16", np.dtype(np.uint16), "U16"),
    DType("int32", np.dtype(np.int32), "I32"),
    DType("uint32", np.dtype(np.uint32), "U32"),
    DType("int64", np.dtype(np.int64), "I64"),
    DType("uint64", np.dtype(np.uint64), "U64"),
    DType("float16", np.dtype(np.float16), "F16", True),
    DType("bfloat16", np.dtype(np.uint16), "BF16", True),
    DType("float32", np.dtype(np.float32), "F32", True),
    DType("float64", np.dtype(np.float64), "F64", True),
    DType("float8_e4m3fn", np.dtype(np.uint8), "F8_E4M3", True),
    DType("float8_e5m2", np.dtype(np.uint8), "F8_E5M2", True),
    DType("complex64", np.dtype(np.complex64), "C64"),
    DType("complex128", np.dtype(np.complex128), None),
]
BY_NAME = {d.name: d for d in _TABLE}
BY_SAFETENSORS = {d.safetensors: d for d in _TABLE if d.safetensors}
# Paddle's own spellings of the same dtypes in older metadata files.
BY_NAME.update(
    {"fp16": BY_NAME["float16"], "bf16": BY_NAME["bfloat16"], "fp32": BY_NAME["float32"]}
)

# What `--dtype` may cast floating tensors to.
CAST_TARGETS = ("float32", "bfloat16", "float16")


def dtype(name: str) -> DType:
    try:
        return BY_NAME[name]
    except KeyError:
        raise CheckpointError(f"unknown dtype {name!r}") from None


def from_safetensors(code: str) -> DType:
    try:
        return BY_SAFETENSORS[code]
    except KeyError:
        raise CheckpointError(f"unknown safetensors dtype {code!r}") from None


def from_numpy(np_dtype: np.dtype) -> DType:
    """The dtype a plain numpy array stands for. uint16 means bfloat16, as in Paddle's .pdparams."""
    np_dtype = np.dtype(np_dtype).newbyteorder("=")
    if np_dtype == np.uint16:
        return BY_NAME["bfloat16"]
    for d in _TABLE:
        if d.storage == np_dtype and d.name not in ("float8_e4m3fn", "float8_e5m2"):
            return d
    raise CheckpointError(f"unsupported numpy dtype {np_dtype}")


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round to nearest even, as torch and Paddle do; NaNs stay (quiet) NaNs."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def to_float32(array: np.ndarray, src: DType) -> np.ndarray:
    if src.name == "bfloat16":
        return bf16_bits_to_float32(array)
    if src.name in ("float16", "float32", "float64"):
        return array.astype(np.float32, copy=False)
    raise CheckpointError(f"cannot cast {src.name} tensors")


def cast(array: np.ndarray, src: DType, dst: DType) -> np.ndarray:
    """Cast a floating tensor (storage view in, storage view out). Non-float tensors never get here."""
    if src.name == dst.name:
        return array
    if dst.name == "bfloat16":
        return float32_to_bf16_bits(to_float32(array, src))
    if dst.name in ("float16", "float32", "float64"):
        if src.name == "bfloat16":
            array = bf16_bits_to_float32(array)
        elif src.name not in ("float16", "float32", "float64"):
            raise CheckpointError(f"cannot cast {src.name} tensors")
        return array.astype(dst.storage)
    raise CheckpointError(f"cannot cast to {dst.name}")

"""Reader and writer of the ``PREFIX.bin`` + ``PREFIX.idx`` token dataset ("MMIDIDX").

Byte-compatible with Megatron-LM's and PaddleNLP's indexed datasets. All little-endian:

    offset 0   9 bytes  magic b"MMIDIDX\\x00\\x00"
    offset 9   <Q       version = 1
    offset 17  <B       dtype code (see DTYPE_CODES)
    offset 18  <Q       N, number of sequences
    offset 26  <Q       M, length of doc_idx
    offset 34  int32 sizes[N], int64 pointers[N] (byte offsets into .bin), int64 doc_idx[M]

``.bin`` is every sequence's tokens back to back in the index dtype. ``doc_idx`` lists the sequence
at which each document starts, beginning with 0 and ending with N.
"""

from __future__ import annotations

import array
import contextlib
import mmap
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from llama_data.errors import DataError
from llama_data.fileio import new_file_mode

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, N, M
HEADER_SIZE = _HEADER.size  # 34

# Codes shared by Megatron-LM (1..8) and PaddleNLP (9, 10). PaddleNLP maps 7 to float64 by mistake;
# Megatron-LM's float32 is the meaning kept here.
DTYPE_CODES: dict[int, np.dtype] = {
    code: np.dtype(name).newbyteorder("<")
    for code, name in {
        1: "uint8",
        2: "int8",
        3: "int16",
        4: "int32",
        5: "int64",
        6: "float64",
        7: "float32",
        8: "uint16",
        9: "uint32",
        10: "uint64",
    }.items()
}
_CODE_OF = {dtype: code for code, dtype in DTYPE_CODES.items()}

# How many elements a validation or vocabulary scan holds in memory at once.
_SCAN_CHUNK = 1 << 22
_COPY_BUFSIZE = 16 << 20
_WRITE_BUFSIZE = 8 << 20


def best_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype Megatron-LM / PaddleNLP use for a vocabulary: uint16 below 65,536, else int32."""
    return DTYPE_CODES[8] if vocab_size < 65536 else DTYPE_CODES[4]


def dtype_code(dtype) -> int:
    """The index code of a numpy dtype (anything ``np.dtype`` accepts); DataError if it has none."""
    try:
        dt = np.dtype(dtype).newbyteorder("<")
    except TypeError as exc:
        raise DataError(f"not a numpy dtype: {dtype!r}") from exc
    if dt not in _CODE_OF:
        names = ", ".join(str(d) for d in DTYPE_CODES.values())
        raise DataError(
            f"dtype {np.dtype(dtype)} cannot be stored in an .idx file (one of: {names})"
        )
    return _CODE_OF[dt]


def index_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.idx")


def data_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.bin")


def _map_file(path: Path) -> memoryview:
    """A read-only memory map of a whole file (an empty buffer for an empty file, which mmap refuses)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return memoryview(b"")
        return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))


class IndexedDataset:
    """A memory-mapped ``PREFIX.bin`` / ``PREFIX.idx`` pair; ``ds[i]`` is sequence ``i`` (a view)."""

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = os.fspath(prefix)
        self.idx_path = index_path(prefix)
        self.bin_path = data_path(prefix)
        for path in (self.idx_path, self.bin_path):
            if not path.is_file():
                raise DataError(f"{path}: no such file")
        self._read_index()
        self._tokens = np.frombuffer(_map_file(self.bin_path), dtype=self.dtype)
        self._validate_data()

    def _read_index(self) -> None:
        path = self.idx_path
        buf = _map_file(path)
        magic = bytes(buf[: len(MAGIC)])
        if magic != MAGIC:
            raise DataError(f"{path}: not an MMIDIDX index (magic {magic!r}, expected {MAGIC!r})")
        if len(buf) < HEADER_SIZE:
            raise DataError(
                f"{path}: truncated index ({len(buf)} bytes, the header needs {HEADER_SIZE})"
            )
        _, version, code, n, m = _HEADER.unpack_from(buf, 0)
        if version != VERSION:
            raise DataError(f"{path}: unsupported index version {version} (expected {VERSION})")
        if code not in DTYPE_CODES:
            raise DataError(f"{path}: unknown dtype code {code} (expected 1..10)")
        expected = HEADER_SIZE + 4 * n + 8 * n + 8 * m
        if len(buf) < expected:
            raise DataError(
                f"{path}: truncated index ({len(buf)} bytes, header announces {n} sequences and "
                f"{m} doc_idx entries = {expected} bytes)"
            )
        if len(buf) > expected:
            raise DataError(f"{path}: {len(buf) - expected} unexpected bytes after doc_idx")
        self.dtype: np.dtype = DTYPE_CODES[code]
        self.sizes = np.frombuffer(buf, dtype="<i4", count=n, offset=HEADER_SIZE)
        self.pointers = np.frombuffer(buf, dtype="<i8", count=n, offset=HEADER_SIZE + 4 * n)
        self.doc_idx = np.frombuffer(buf, dtype="<i8", count=m, offset=HEADER_SIZE + 12 * n)
        self._validate_index(n, m)

    def _validate_index(self, n: int, m: int) -> None:
        path = self.idx_path
        doc_idx = self.doc_idx
        if m == 0 or doc_idx[0] != 0 or doc_idx[-1] != n:
            first = int(doc_idx[0]) if m else None
            last = int(doc_idx[-1]) if m else None
            raise DataError(
                f"{path}: doc_idx must start at 0 and end at {n} (the number of sequences), "
                f"got first={first} last={last}"
            )
        if m > 1:
            bad = np.flatnonzero(np.diff(doc_idx) < 0)
            if bad.size:
                raise DataError(f"{path}: doc_idx decreases at entry {int(bad[0]) + 1}")
        itemsize = self.dtype.itemsize
        # Chunked, so that a dataset of a billion sequences is checked without a billion-int temporary.
        offset = 0  # expected byte offset of the first sequence of the chunk
        for start in range(0, n, _SCAN_CHUNK):
            sizes = self.sizes[start : start + _SCAN_CHUNK].astype(np.int64)
            if (sizes < 0).any():
                i = start + int(np.flatnonzero(sizes < 0)[0])
                raise DataError(f"{path}: negative size {int(self.sizes[i])} for sequence {i}")
            ends = np.cumsum(sizes * itemsize) + offset
            expected = ends - sizes * itemsize
            mismatch = np.flatnonzero(self.pointers[start : start + _SCAN_CHUNK] != expected)
            if mismatch.size:
                i = start + int(mismatch[0])
                raise DataError(
                    f"{path}: pointers do not match sizes: sequence {i} starts at byte "
                    f"{int(self.pointers[i])}, expected {int(expected[mismatch[0]])}"
                )
            offset = int(ends[-1])
        self._data_bytes = offset

    def _validate_data(self) -> None:
        actual = self.bin_path.stat().st_size
        if actual < self._data_bytes:
            raise DataError(
                f"{self.bin_path}: truncated data file ({actual} bytes, the index needs "
                f"{self._data_bytes} = {self._data_bytes // self.dtype.itemsize} tokens of {self.dtype})"
            )
        if actual != self._data_bytes:
            raise DataError(
                f"{self.bin_path}: data file has {actual} bytes, the index describes {self._data_bytes} "
                f"({actual - self._data_bytes} bytes unaccounted for)"
            )

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self.sizes)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sequence {i} out of range for a dataset of {n} sequences")
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self._tokens[start : start + int(self.sizes[i])]

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``offset : offset + length`` of sequence ``i`` (to its end when length is None)."""
        seq = self[i]
        if offset < 0 or offset > len(seq):
            raise IndexError(f"offset {offset} out of range for sequence {i} of {len(seq)} tokens")
        stop = len(seq) if length is None else offset + length
        if length is not None and (length < 0 or stop > len(seq)):
            raise IndexError(
                f"length {length} from offset {offset} overruns sequence {i} of {len(seq)} tokens"
            )
        return seq[offset:stop]

    @property
    def tokens(self) -> np.ndarray:
        """Every token of the ``.bin`` file as one memory-mapped array."""
        return self._tokens

    @property
    def num_tokens(self) -> int:
        return self._data_bytes // self.dtype.itemsize

    @property
    def num_docs(self) -> int:
        return len(self.doc_idx) - 1

    def document_lengths(self) -> np.ndarray:
        """Tokens per document (int64, length ``num_docs``)."""
        ends = np.concatenate(([0], np.cumsum(self.sizes, dtype=np.int64)))
        return ends[self.doc_idx[1:]] - ends[self.doc_idx[:-1]]

    def token_range(self) -> tuple[int, int] | None:
        """(min, max) token id, scanned in chunks; None for an empty dataset."""
        lo = hi = None
        for start in range(0, len(self._tokens), _SCAN_CHUNK):
            chunk = self._tokens[start : start + _SCAN_CHUNK]
            cmin, cmax = chunk.min(), chunk.max()
            lo = cmin if lo is None else min(lo, cmin)
            hi = cmax if hi is None else max(hi, cmax)
        return None if lo is None else (lo.item(), hi.item())

    def check_vocab(self, vocab_size: int) -> None:
        """DataError naming the first token id outside ``[0, vocab_size)``, scanned in chunks."""
        for start in range(0, len(self._tokens), _SCAN_CHUNK):
            chunk = self._tokens[start : start + _SCAN_CHUNK]
            bad = (chunk >= vocab_size) | (chunk < 0)
            if bad.any():
                pos = start + int(np.argmax(bad))
                byte = pos * self.dtype.itemsize
                seq = int(np.searchsorted(self.pointers, byte, side="right")) - 1
                raise DataError(
                    f"{self.bin_path}: token id {self._tokens[pos].item()} at token {pos} "
                    f"(sequence {seq}) is outside the vocabulary of {vocab_size}"
                )

    def __reduce__(self):
        # Reopen by name in another process instead of pickling the memory maps.
        return (type(self), (self.prefix,))

    def __repr__(self) -> str:
        return (
            f"IndexedDataset({self.prefix!r}, sequences={len(self)}, documents={self.num_docs}, "
            f"tokens={self.num_tokens}, dtype={self.dtype})"
        )


class IndexedDatasetWriter:
    """Streams sequences into ``PREFIX.bin`` / ``PREFIX.idx``; the files appear only on success.

    Tokens go to a temporary ``.bin`` as they come; only sizes and document boundaries stay in memory
    (12 bytes per single-sequence document). ``close()`` writes the index and renames both files into
    place; leaving the ``with`` block through an exception removes the temporary files instead.
    """

    def __init__(self, prefix: str | os.PathLike, dtype):
        self.prefix = os.fspath(prefix)
        self._code = dtype_code(dtype)
        self.dtype = DTYPE_CODES[self._code]
        directory = os.path.dirname(os.path.abspath(self.prefix))
        base = os.path.basename(self.prefix)
        # Temporary names in the output directory, so that the final os.replace is a rename.
        fd, self._tmp_bin = tempfile.mkstemp(prefix=f".{base}.bin.", suffix=".tmp", dir=directory)
        self._bin = open(fd, "wb", buffering=_WRITE_BUFSIZE)  # noqa: SIM115 (closed by close/abort)
        try:
            idx_fd, self._tmp_idx = tempfile.mkstemp(
                prefix=f".{base}.idx.", suffix=".tmp", dir=directory
            )
            os.close(idx_fd)
        except BaseException:
            self._bin.close()
            os.unlink(self._tmp_bin)
            raise
        self._sizes = array.array("i")
        self._doc_idx = array.array("q", [0])
        self._closed = False

    # -- adding data ---------------------------------------------------------------------------
    def _as_tokens(self, tokens) -> np.ndarray:
        if not isinstance(tokens, np.ndarray):
            # Straight to the target dtype: numpy range-checks Python ints (inferring a dtype first
            # would turn large uint64 values into floats).
            try:
                tokens = np.asarray(tokens, dtype=self.dtype)
            except OverflowError as exc:
                raise DataError(f"token ids do not fit in {self.dtype} ({exc})") from None
        arr = tokens
        if arr.ndim != 1:
            raise ValueError(f"a sequence is a 1-D array of token ids, got shape {arr.shape}")
        if arr.dtype == self.dtype:
            return np.ascontiguousarray(arr)
        if arr.size and arr.dtype.kind in "iub" and not np.can_cast(arr.dtype, self.dtype):
            lo, hi = arr.min(), arr.max()
            info = np.iinfo(self.dtype) if self.dtype.kind in "iu" else np.finfo(self.dtype)
            if lo < info.min or hi > info.max:
                raise DataError(
                    f"token id {hi if hi > info.max else lo} does not fit in {self.dtype}"
                )
        return arr.astype(self.dtype)

    def add_item(self, tokens) -> None:
        """Append one sequence to the current document."""
        self._check_open()
        arr = self._as_tokens(tokens)
        if arr.size > np.iinfo(np.int32).max:
            raise DataError(
                f"a sequence of {arr.size} tokens does not fit the int32 sizes of an index"
            )
        self._bin.write(arr.data)
        self._sizes.append(arr.size)

    def end_document(self) -> None:
        """Close the current document (a no-op when no sequence was added since the last one)."""
        self._check_open()
        if self._doc_idx[-1] != len(self._sizes):
            self._doc_idx.append(len(self._sizes))

    def add_document(self, tokens_or_sequences) -> None:
        """Append a whole document: one token sequence, or a list of sequences."""
        if isinstance(tokens_or_sequences, np.ndarray) or not _is_nested(tokens_or_sequences):
            self.add_item(tokens_or_sequences)
        else:
            for seq in tokens_or_sequences:
                self.add_item(seq)
        self.end_document()

    def add_documents(self, tokens: np.ndarray, lengths: Sequence[int] | np.ndarray) -> None:
        """Append many single-sequence documents at once: ``tokens`` is their concatenation."""
        self._check_open()
        self.end_document()
        lengths = np.asarray(lengths, dtype=np.int64)
        arr = self._as_tokens(tokens)
        if int(lengths.sum()) != arr.size:
            raise ValueError(
                f"lengths sum to {int(lengths.sum())} but {arr.size} tokens were given"
            )
        if lengths.size and (lengths.min() < 0 or lengths.max() > np.iinfo(np.int32).max):
            raise DataError("a document length does not fit the int32 sizes of an index")
        lengths = lengths[lengths > 0]  # an empty document adds nothing, not even an entry
        self._bin.write(arr.data)
        first = len(self._sizes)
        self._sizes.frombytes(lengths.astype("<i4").tobytes())
        ends = np.arange(first + 1, first + 1 + lengths.size, dtype="<i8")
        self._doc_idx.frombytes(ends.tobytes())

    def append_dataset(self, dataset: IndexedDataset | str | os.PathLike) -> None:
        """Append every document of another dataset of the same dtype, copying its ``.bin`` in blocks."""
        self._check_open()
        if self._doc_idx[-1] != len(self._sizes):
            raise ValueError("end_document() before appending a dataset")
        ds = dataset if isinstance(dataset, IndexedDataset) else IndexedDataset(dataset)
        if ds.dtype != self.dtype:
            raise DataError(
                f"{ds.bin_path}: dtype {ds.dtype} differs from the output's {self.dtype}"
            )
        with open(ds.bin_path, "rb") as src:
            shutil.copyfileobj(src, self._bin, _COPY_BUFSIZE)
        offset = len(self._sizes)
        self._sizes.frombytes(ds.sizes.astype("<i4").tobytes())
        self._doc_idx.frombytes((ds.doc_idx[1:] + offset).astype("<i8").tobytes())

    # -- finishing -----------------------------------------------------------------------------
    @property
    def num_sequences(self) -> int:
        return len(self._sizes)

    @property
    def num_docs(self) -> int:
        return len(self._doc_idx) - 1

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"writer for {self.prefix} is closed")

    def close(self) -> None:
        """Write the index and move both files to their final names."""
        if self._closed:
            return
        try:
            self.end_document()
            self._bin.close()
            sizes = (
                np.frombuffer(self._sizes, dtype=np.int32)
                if len(self._sizes)
                else np.zeros(0, np.int32)
            )
            write_index(
                self._tmp_idx, self._code, sizes, np.frombuffer(self._doc_idx, dtype=np.int64)
            )
            mode = new_file_mode()  # mkstemp made them private; give them the usual permissions
            os.chmod(self._tmp_bin, mode)
            os.chmod(self._tmp_idx, mode)
            os.replace(self._tmp_bin, data_path(self.prefix))
            os.replace(self._tmp_idx, index_path(self.prefix))
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def abort(self) -> None:
        """Drop everything written so far; nothing appears under the final names."""
        self._closed = True
        self._bin.close()
        for path in (self._tmp_bin, self._tmp_idx):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _is_nested(obj) -> bool:
    """True for a list of sequences, False for one flat sequence of ids."""
    for first in obj:
        return not isinstance(first, (int, np.integer))
    return False


def write_index(path: str | os.PathLike, code: int, sizes: np.ndarray, doc_idx: np.ndarray) -> None:
    """Write an ``.idx`` file for sequences of ``sizes`` stored back to back (pointers are derived)."""
    itemsize = DTYPE_CODES[code].itemsize
    pointers = np.zeros(len(sizes), dtype="<i8")
    if len(sizes) > 1:
        np.cumsum(sizes[:-1], dtype=np.int64, out=pointers[1:])
        pointers *= itemsize
    with open(path, "wb") as f:
        f.write(_HEADER.pack(MAGIC, VERSION, code, len(sizes), len(doc_idx)))
        f.write(np.asarray(sizes, dtype="<i4").tobytes())
        f.write(pointers.tobytes())
        f.write(np.asarray(doc_idx, dtype="<i8").tobytes())


def merge_datasets(
    prefixes: Iterable[str | os.PathLike], out_prefix: str | os.PathLike
) -> IndexedDataset:
    """Concatenate several datasets (same dtype) into ``out_prefix``, documents in the given order."""
    datasets = [IndexedDataset(p) for p in prefixes]
    if not datasets:
        raise DataError("nothing to merge: no input datasets")
    dtypes = {ds.dtype for ds in datasets}
    if len(dtypes) > 1:
        found = ", ".join(f"{ds.prefix}: {ds.dtype}" for ds in datasets)
        raise DataError(f"cannot merge datasets of different dtypes ({found})")
    with IndexedDatasetWriter(out_prefix, datasets[0].dtype) as writer:
        for ds in datasets:
            writer.append_dataset(ds)
    return IndexedDataset(out_prefix)

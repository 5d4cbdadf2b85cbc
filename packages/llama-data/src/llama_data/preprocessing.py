"""Raw text -> tokenized ``PREFIX.bin`` / ``PREFIX.idx``, in one process or several.

The input is cut into tasks (corpus.plan_tasks) independently of the worker count. One worker
tokenizes straight into the output. Several workers each write the tasks they take to shard files in
a temporary directory beside the output; the main process appends the shards to the output in task
order as they finish. Either way the output bytes are the same for any ``workers``.
"""

from __future__ import annotations

import ctypes
import itertools
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from llama_data.corpus import (
    DEFAULT_CHUNK_BYTES,
    TXT_MODES,
    ReadOptions,
    ReadStats,
    ReadTask,
    find_input_files,
    iter_documents,
    plan_tasks,
)
from llama_data.errors import DataError
from llama_data.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetWriter,
    best_dtype,
    data_path,
    index_path,
)
from llama_data.tokenizer import Tokenizer, load_tokenizer

DTYPE_CHOICES = ("auto", "uint16", "int32")


@dataclass(frozen=True)
class TokenizeOptions:
    tokenizer: str
    dtype: str  # a numpy dtype name
    read: ReadOptions
    append_eos: bool = True
    prepend_bos: bool = False


@dataclass
class PreprocessResult:
    """What ``preprocess`` wrote and read."""

    output_prefix: str
    files: int
    documents: int
    tokens: int
    dtype: str
    tokenizer: str
    vocab_size: int
    bytes_in: int  # bytes of the input files as stored (compressed for .zst/.gz)
    elapsed_s: float
    workers: int
    empty_documents: int = 0
    bad_lines: int = 0
    first_bad_line: str | None = None
    outputs: list[str] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_in / 1e6 / self.elapsed_s if self.elapsed_s > 0 else float("inf")


def resolve_dtype(dtype: str, vocab_size: int) -> np.dtype:
    """The token dtype for ``--dtype`` given a vocabulary; DataError if the ids would not fit."""
    if dtype == "auto":
        return best_dtype(vocab_size)
    if dtype not in DTYPE_CHOICES:
        raise DataError(f"unknown dtype {dtype!r} (one of {', '.join(DTYPE_CHOICES)})")
    dt = np.dtype(dtype)
    if vocab_size - 1 > np.iinfo(dt).max:
        raise DataError(f"--dtype {dtype} cannot hold ids of a vocabulary of {vocab_size}")
    return dt


def preprocess(
    inputs: Sequence[str | os.PathLike],
    output_prefix: str | os.PathLike,
    tokenizer: str | os.PathLike,
    *,
    json_key: str = "text",
    append_eos: bool = True,
    prepend_bos: bool = False,
    workers: int = 1,
    skip_bad_lines: bool = False,
    dtype: str = "auto",
    txt_mode: str = "file",
    overwrite: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: bool | None = None,
) -> PreprocessResult:
    """Tokenize every document of ``inputs`` into ``output_prefix``.bin/.idx, one document each.

    ``tokenizer`` is a spec for ``load_tokenizer`` (workers load their own copy). ``progress``: a
    tqdm bar on stderr (None: only when stderr is a terminal).
    """
    started = time.perf_counter()
    output_prefix = os.fspath(output_prefix)
    if workers < 1:
        raise DataError(f"--workers must be at least 1, got {workers}")
    if txt_mode not in TXT_MODES:
        raise DataError(f"unknown txt mode {txt_mode!r} (one of {', '.join(TXT_MODES)})")
    outputs = [str(data_path(output_prefix)), str(index_path(output_prefix))]
    if not overwrite:
        existing = [p for p in outputs if os.path.exists(p)]
        if existing:
            raise DataError(f"{existing[0]} already exists (--overwrite to replace it)")
    tok = load_tokenizer(tokenizer)
    if append_eos and tok.eos_id is None:
        raise DataError(f"tokenizer {tok.name} has no EOS token (use --no-append-eos)")
    if prepend_bos and tok.bos_id is None:
        raise DataError(f"tokenizer {tok.name} has no BOS token (drop --prepend-bos)")
    token_dtype = resolve_dtype(dtype, tok.vocab_size)
    files = find_input_files(inputs)
    tasks = plan_tasks(files, chunk_bytes)
    options = TokenizeOptions(
        tokenizer=os.fspath(tokenizer),
        dtype=token_dtype.name,
        read=ReadOptions(json_key=json_key, txt_mode=txt_mode, skip_bad_lines=skip_bad_lines),
        append_eos=append_eos,
        prepend_bos=prepend_bos,
    )
    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(out_dir, exist_ok=True)
    bytes_in = sum(f.size for f in files)
    workers = min(workers, len(tasks))

    from tqdm.auto import tqdm

    pool = _WorkerPool(options, workers) if workers > 1 else None  # before tqdm starts a thread
    bar = tqdm(
        total=bytes_in,
        unit="B",
        unit_scale=True,
        desc="tokenizing",
        disable=None if progress is None else not progress,
        dynamic_ncols=True,
    )
    stats = ReadStats()
    try:
        with IndexedDatasetWriter(output_prefix, token_dtype) as writer:
            if pool is None:
                _run_in_process(tasks, options, tok, writer, stats, bar)
            else:
                pool.run(tasks, writer, stats, bar, out_dir)
            if writer.num_docs == 0:
                raise DataError(
                    f"no documents in the input ({len(files)} files, {stats.empty_documents} empty "
                    f"documents, {stats.bad_lines} bad lines skipped)"
                )
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    ds = IndexedDataset(output_prefix)
    return PreprocessResult(
        output_prefix=output_prefix,
        files=len(files),
        documents=ds.num_docs,
        tokens=ds.num_tokens,
        dtype=token_dtype.name,
        tokenizer=tok.name,
        vocab_size=tok.vocab_size,
        bytes_in=bytes_in,
        elapsed_s=time.perf_counter() - started,
        workers=workers,
        empty_documents=stats.empty_documents,
        bad_lines=stats.bad_lines,
        first_bad_line=stats.first_bad_line,
        outputs=outputs,
    )


# -- the work of one task -------------------------------------------------------------------------
def tokenize_task(
    task: ReadTask,
    options: TokenizeOptions,
    tok: Tokenizer,
    writer: IndexedDatasetWriter,
    on_progress: Callable[[int, int], None] | None = None,
) -> ReadStats:
    """Tokenize the documents of one task into ``writer``; ``on_progress(bytes, documents)``."""
    stats = ReadStats()
    dtype = np.dtype(options.dtype)
    bos = (tok.bos_id,) if options.prepend_bos else ()
    eos = (tok.eos_id,) if options.append_eos else ()
    report_bytes = (lambda n: on_progress(n, 0)) if on_progress else None
    for texts in iter_documents(task, options.read, stats, report_bytes):
        tokens, lengths = flatten(tok.encode_batch(texts), bos, eos, dtype)
        writer.add_documents(tokens, lengths)
        if on_progress:
            on_progress(0, len(texts))
    return stats


def flatten(
    sequences: list[list[int]], bos: tuple, eos: tuple, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate token lists (each framed by ``bos``/``eos``) into one array, plus their lengths."""
    extra = len(bos) + len(eos)
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences)) + extra
    if extra:
        parts = itertools.chain.from_iterable((bos, seq, eos) for seq in sequences)
    else:
        parts = sequences
    tokens = np.fromiter(
        itertools.chain.from_iterable(parts), dtype=dtype, count=int(lengths.sum())
    )
    return tokens, lengths


# -- one process ----------------------------------------------------------------------------------
def _run_in_process(tasks, options, tok, writer, stats, bar) -> None:
    docs = 0

    def on_progress(nbytes: int, ndocs: int) -> None:
        nonlocal docs
        docs += ndocs
        bar.update(nbytes)
        if ndocs:
            _show_rate(bar, docs)

    for task in tasks:
        stats.add(tokenize_task(task, options, tok, writer, on_progress))


def _show_rate(bar, docs: int) -> None:
    if bar.disable:
        return
    elapsed = bar.format_dict.get("elapsed") or 0
    if elapsed > 0:
        bar.set_postfix_str(f"{docs / elapsed:,.0f} docs/s", refresh=False)


# -- several processes ----------------------------------------------------------------------------
_worker: dict = {}


def _init_worker(options: TokenizeOptions, counters) -> None:
    # Ctrl-C reaches the whole process group: let the parent alone decide to stop the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # One core per worker: the Hugging Face tokenizers would otherwise start a thread per core each.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker["options"] = options
    _worker["tokenizer"] = load_tokenizer(options.tokenizer)
    _worker["counters"] = counters


def _tokenize_shard(job: tuple[ReadTask, str]) -> tuple[str, ReadStats]:
    task, shard_prefix = job
    counters = _worker["counters"]

    def on_progress(nbytes: int, ndocs: int) -> None:
        with counters[0].get_lock():
            counters[0].value += nbytes
            counters[1].value += ndocs

    with IndexedDatasetWriter(shard_prefix, _worker["options"].dtype) as shard:
        stats = tokenize_task(task, _worker["options"], _worker["tokenizer"], shard, on_progress)
    return shard_prefix, stats


class _WorkerPool:
    """Worker processes, each tokenizing whole tasks into shard files."""

    def __init__(self, options: TokenizeOptions, workers: int):
        # fork on Linux: no re-import per worker, and a caller's script needs no __main__ guard.
        # It is created before the progress bar, while this process runs no thread of ours.
        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self.counters = (ctx.Value(ctypes.c_longlong, 0), ctx.Value(ctypes.c_longlong, 0))
        self.pool = ctx.Pool(workers, initializer=_init_worker, initargs=(options, self.counters))
        self._finished = False

    def run(self, tasks, writer, stats, bar, out_dir) -> None:
        base = os.path.basename(writer.prefix)
        shard_dir = tempfile.mkdtemp(prefix=f".{base}.shards-", dir=out_dir)
        try:
            jobs = [(task, os.path.join(shard_dir, f"{task.index:08d}")) for task in tasks]
            results = self.pool.imap(_tokenize_shard, jobs)
            for _ in jobs:
                while True:
                    try:
                        shard_prefix, task_stats = results.next(timeout=0.5)
                        break
                    except multiprocessing.TimeoutError:
                        _refresh(bar, self.counters)
                # Appended in task order as they finish: the output is the one-process output.
                writer.append_dataset(shard_prefix)
                for path in (data_path(shard_prefix), index_path(shard_prefix)):
                    os.unlink(path)
                stats.add(task_stats)
                _refresh(bar, self.counters)
            self.pool.close()
            self._finished = True
        finally:
            if not self._finished:
                self.pool.terminate()  # stop the workers before removing the files they write
                self.pool.join()
            shutil.rmtree(shard_dir, ignore_errors=True)

    def shutdown(self) -> None:
        if not self._finished:
            self.pool.terminate()
        self.pool.join()


def _refresh(bar, counters) -> None:
    if bar.disable:
        return
    bar.update(counters[0].value - bar.n)
    _show_rate(bar, counters[1].value)

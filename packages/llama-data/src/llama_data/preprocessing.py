"""Raw text -> tokenized ``PREFIX.bin`` / ``PREFIX.idx``, in one process or several.

The input is cut into tasks at document boundaries (corpus.plan_tasks). One worker tokenizes
straight into the output. Several workers each write the tasks they take to shard files in a
temporary directory beside the output; the main process appends the shards to the output in task
order as they finish. Each document is tokenized alone, so the output bytes are the same for any
``workers`` and any cut.

Each worker is one single-threaded process: the tokenizer libraries' own threads are turned off, so
that ``workers`` is the number of cores used, and the Python work around the tokenizer (parsing
JSON, building the arrays) runs in parallel too.
"""

from __future__ import annotations

import contextlib
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
    BATCH_BYTES,
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
AUTO_WORKERS = "auto"


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


def usable_cpus() -> int:
    """The cores this process may run on (its CPU affinity), what ``workers="auto"`` means."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_workers(workers: int | str) -> int:
    """A number of worker processes from ``workers``: a count, or ``"auto"``."""
    if workers == AUTO_WORKERS:
        return usable_cpus()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DataError(
            f"--workers must be a whole number of at least 1 or 'auto', got {workers!r}"
        )
    return workers


def preprocess(
    inputs: Sequence[str | os.PathLike],
    output_prefix: str | os.PathLike,
    tokenizer: str | os.PathLike,
    *,
    text_key: str = "text",
    append_eos: bool = True,
    prepend_bos: bool = False,
    workers: int | str = 1,
    skip_bad_lines: bool = False,
    dtype: str = "auto",
    txt_mode: str = "file",
    overwrite: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: bool | None = None,
    json_key: str | None = None,
) -> PreprocessResult:
    """Tokenize every document of ``inputs`` into ``output_prefix``.bin/.idx, one document each.

    ``tokenizer`` is a spec for ``load_tokenizer``. ``text_key``: the jsonl key or the Parquet/Arrow
    column of the text (``json_key`` is its former name). ``workers``: processes, or ``"auto"`` for
    the usable cores. ``chunk_bytes``: the most input one task covers; a worker tokenizes
    ``min(chunk_bytes, BATCH_BYTES)`` (1 MiB) of text at a time, or one larger document, which is
    what bounds its memory. ``progress``: a tqdm bar on stderr (None: only when stderr is a
    terminal).
    """
    started = time.perf_counter()
    output_prefix = os.fspath(output_prefix)
    workers = resolve_workers(workers)
    text_key = json_key if json_key is not None else text_key
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
    tasks = plan_tasks(files, chunk_bytes, workers=workers, text_key=text_key)
    options = TokenizeOptions(
        tokenizer=os.fspath(tokenizer),
        dtype=token_dtype.name,
        read=ReadOptions(
            text_key=text_key,
            txt_mode=txt_mode,
            skip_bad_lines=skip_bad_lines,
            batch_bytes=min(chunk_bytes, BATCH_BYTES),
        ),
        append_eos=append_eos,
        prepend_bos=prepend_bos,
    )
    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(out_dir, exist_ok=True)
    bytes_in = sum(f.size for f in files)
    workers = min(workers, len(tasks))

    from tqdm.auto import tqdm

    pool = _WorkerPool(options, tok, workers) if workers > 1 else None  # before tqdm's thread
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
                with _tokenizer_threads_off():
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


@contextlib.contextmanager
def _tokenizer_threads_off():
    """One core for the one worker: Hugging Face tokenizers would spread a batch over every core
    (its switch is read from the environment at each call)."""
    before = os.environ.get(_HF_THREADS)
    os.environ[_HF_THREADS] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_HF_THREADS, None)
        else:
            os.environ[_HF_THREADS] = before


_HF_THREADS = "TOKENIZERS_PARALLELISM"


def _show_rate(bar, docs: int) -> None:
    if bar.disable:
        return
    elapsed = bar.format_dict.get("elapsed") or 0
    if elapsed > 0:
        bar.set_postfix_str(f"{docs / elapsed:,.0f} docs/s", refresh=False)


# -- several processes ----------------------------------------------------------------------------
_worker: dict = {}


def _init_worker(options: TokenizeOptions, counters, tok: Tokenizer | None) -> None:
    # Ctrl-C reaches the whole process group: let the parent alone decide to stop the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # One core per worker: the Hugging Face tokenizers would otherwise start a thread per core each.
    os.environ[_HF_THREADS] = "false"
    _worker["options"] = options
    # A forked worker has the parent's tokenizer already (a Llama-3 one takes a second to load).
    _worker["tokenizer"] = tok if tok is not None else load_tokenizer(options.tokenizer)
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

    def __init__(self, options: TokenizeOptions, tok: Tokenizer, workers: int):
        # fork on Linux: no re-import per worker, the tokenizer inherited rather than loaded again,
        # and a caller's script needs no __main__ guard. The pool is created before the progress
        # bar, while this process runs no thread of ours, and before it has tokenized anything
        # (Hugging Face tokenizers turn their threads off in a child forked after using them).
        fork = sys.platform.startswith("linux")
        ctx = multiprocessing.get_context("fork" if fork else "spawn")
        self.counters = (ctx.Value(ctypes.c_longlong, 0), ctx.Value(ctypes.c_longlong, 0))
        self.pool = ctx.Pool(
            workers,
            initializer=_init_worker,
            initargs=(options, self.counters, tok if fork else None),
        )
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

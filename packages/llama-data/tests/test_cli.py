"""The llama-data command line: every command, its errors, and the installed entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from corpus_files import write_jsonl, write_parquet
from mmidx_reference import write_reference

from llama_data import IndexedDataset, __version__
from llama_data.cli import main

COMMANDS = ["preprocess", "train-tokenizer", "merge", "inspect"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_version():
    result = run("--version")
    assert result.exit_code == 0
    assert result.output == f"llama-data, version {__version__}\n"


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_help(command):
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert result.output.startswith("Usage: main")
    for c in COMMANDS if not command else []:
        assert c in result.output


def test_preprocess_and_inspect(tmp_path):
    texts = ["héllo world", "second\ndocument", "x" * 50]
    write_jsonl(tmp_path / "a.jsonl", texts)
    result = run(
        "preprocess",
        "--input",
        tmp_path / "a.jsonl",
        "--output-prefix",
        tmp_path / "ds",
        "--tokenizer",
        "byte",
    )
    assert result.exit_code == 0, result.output
    assert "documents   3 from 1 files" in result.output
    n_tokens = sum(len(t.encode()) + 1 for t in texts)
    assert f"tokens      {n_tokens} (uint16, vocab 259)" in result.output
    assert f"wrote       {tmp_path / 'ds.bin'}, {tmp_path / 'ds.idx'}" in result.output

    result = run(
        "inspect",
        tmp_path / "ds",
        "--tokenizer",
        "byte",
        "--sample",
        1,
        "--sample",
        -1,
        "--json",
        "--max-ids",
        0,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    lengths = [len(t.encode()) + 1 for t in texts]
    assert (report["sequences"], report["documents"], report["tokens"]) == (3, 3, n_tokens)
    assert report["dtype"] == "uint16"
    assert report["bin_bytes"] == 2 * n_tokens
    assert report["idx_bytes"] == 34 + 12 * 3 + 8 * 4
    all_ids = [b for t in texts for b in t.encode()] + [257]
    assert (report["min_token_id"], report["max_token_id"]) == (min(all_ids), max(all_ids))
    assert report["document_tokens"]["max"] == max(lengths)
    assert report["document_tokens"]["mean"] == pytest.approx(np.mean(lengths))
    assert report["document_tokens"]["p50"] == pytest.approx(np.median(lengths))
    assert [s["index"] for s in report["samples"]] == [1, 2]
    assert report["samples"][0]["text"] == texts[1]
    assert report["samples"][0]["ids"] == [*texts[1].encode(), 257]

    result = run("inspect", tmp_path / "ds", "--tokenizer", "byte", "--sample", 0)
    assert result.exit_code == 0
    assert "documents      3" in result.output
    assert f"text: {texts[0]!r}" in result.output


def test_preprocess_parquet_with_text_key_and_auto_workers(tmp_path):
    write_parquet(tmp_path / "t.parquet", ["héllo", "world"], key="body")
    result = run(
        "preprocess",
        "--input",
        tmp_path / "t.parquet",
        "--output-prefix",
        tmp_path / "ds",
        "--tokenizer",
        "byte",
        "--text-key",
        "body",
        "--workers",
        "auto",
    )
    assert result.exit_code == 0, result.output
    assert "documents   2 from 1 files" in result.output
    assert ", 1 workers)" in result.output  # auto, but one task: one worker
    assert [IndexedDataset(tmp_path / "ds")[i].tolist() for i in range(2)] == [
        [*"héllo".encode(), 257],
        [*b"world", 257],
    ]
    write_jsonl(tmp_path / "k.jsonl", ["abc"], key="content")
    args = ["--output-prefix", tmp_path / "k", "--tokenizer", "byte", "--json-key", "content"]
    assert run("preprocess", "--input", tmp_path / "k.jsonl", *args).exit_code == 0
    assert IndexedDataset(tmp_path / "k")[0].tolist() == [97, 98, 99, 257]


@pytest.mark.parametrize("value", ["0", "-2", "many", "1.5"])
def test_bad_workers_value_is_one_line(tmp_path, value):
    result = CliRunner().invoke(
        main,
        ["preprocess", "--input", "a", "--output-prefix", "o", "--tokenizer", "byte",
         "--workers", value],
        prog_name="llama-data",
    )  # fmt: skip
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        f"Error: Invalid value for '--workers': {value!r} is neither a whole number of at least 1 "
        "nor 'auto'. Try 'llama-data preprocess --help'.\n"
    )


def test_without_pyarrow_parquet_input_is_one_line(tmp_path, monkeypatch):
    write_parquet(tmp_path / "t.parquet", ["a"])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import raises ImportError
    result = run(
        "preprocess", "--input", tmp_path, "--output-prefix", tmp_path / "o", "--tokenizer", "byte"
    )
    assert result.exit_code == 2
    assert result.output == (
        "Error: reading Parquet and Arrow files needs the 'pyarrow' package: "
        "pip install 'llama-data[parquet]'\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


def test_inspect_check_vocab(tmp_path):
    write_reference(str(tmp_path / "ds"), 8, [[1, 2], [99, 3]], [0, 2])
    assert run("inspect", tmp_path / "ds", "--check-vocab", 100).exit_code == 0
    result = run("inspect", tmp_path / "ds", "--check-vocab", 99)
    assert result.exit_code == 2
    assert (
        result.output
        == f"Error: {tmp_path / 'ds.bin'}: token id 99 at token 2 (sequence 1) is outside the vocabulary of 99\n"
    )


def test_merge(tmp_path):
    write_reference(str(tmp_path / "a"), 8, [[1, 2]], [0, 1])
    write_reference(str(tmp_path / "b"), 8, [[3], [4, 5]], [0, 1, 2])
    result = run("merge", tmp_path / "a", tmp_path / "b", "--output-prefix", tmp_path / "m")
    assert result.exit_code == 0, result.output
    ds = IndexedDataset(tmp_path / "m")
    assert [ds[i].tolist() for i in range(len(ds))] == [[1, 2], [3], [4, 5]]
    assert ds.doc_idx.tolist() == [0, 1, 2, 3]
    result = run("merge", tmp_path / "a", "--output-prefix", tmp_path / "m")
    assert result.exit_code == 2
    assert (
        result.output == f"Error: {tmp_path / 'm.bin'} already exists (--overwrite to replace it)\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["preprocess", "--input", "nope.jsonl", "--output-prefix", "o", "--tokenizer", "byte"],
            "nope.jsonl: no such file or directory",
        ),
        (
            [
                "preprocess",
                "--input",
                "a.jsonl",
                "--output-prefix",
                "o",
                "--tokenizer",
                "tok.model",
            ],
            "tokenizer 'tok.model': no such file or directory",
        ),
        (["inspect", "missing"], "missing.idx: no such file"),
        (
            [
                "train-tokenizer",
                "--input",
                "a.jsonl",
                "--output-prefix",
                "t",
                "--vocab-size",
                "100",
            ],
            "--vocab-size 100 is too small",
        ),
    ],
)
def test_user_errors_are_one_line_exit_2(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "a.jsonl", ["text"])
    result = run(*args)
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {message}")
    assert result.output.count("\n") == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_installed_entry_point(tmp_path):
    """The console script of the installed package: exit codes and streams of a real process."""
    exe = Path(sys.executable).parent / "llama-data"
    assert exe.exists(), f"{exe} missing: install the package (pip install -e packages/llama-data)"
    write_jsonl(tmp_path / "a.jsonl", ["abc"])
    proc = subprocess.run(
        [
            exe,
            "preprocess",
            "--input",
            tmp_path / "a.jsonl",
            "--output-prefix",
            tmp_path / "ds",
            "--tokenizer",
            "byte",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert IndexedDataset(tmp_path / "ds")[0].tolist() == [97, 98, 99, 257]
    proc = subprocess.run(
        [
            exe,
            "preprocess",
            "--input",
            tmp_path / "a.jsonl",
            "--output-prefix",
            tmp_path / "ds",
            "--tokenizer",
            "byte",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert (
        proc.stderr == f"Error: {tmp_path / 'ds.bin'} already exists (--overwrite to replace it)\n"
    )


def _clicks_own_error_line(command, args, prog_name) -> str:
    """The ``Error:`` line click prints last for a plain command, after the usage, a hint and a
    blank line (its wording changes between click versions, so the one-line form is compared to
    it)."""
    result = CliRunner().invoke(command, args, prog_name=prog_name)
    lines = result.stderr.splitlines()
    assert result.exit_code == 2 and len(lines) == 4, lines
    assert lines[0].startswith(f"Usage: {prog_name} ") and lines[1:3] == [
        f"Try '{prog_name} --help' for help.",
        "",
    ]
    return lines[3]


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["preprocess", "--input", "a", "--bogus"], "--bogus"),  # an unknown option
        (["inspect"], "PREFIX"),  # a missing argument
        (["preprocess", "--input", "a", "--tokenizer", "byte"], "--output-prefix"),  # an option
        (["samples", "--data", "d", "--seq-len", "0", "--num-samples", "1"], "--seq-len"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args, word):
    line = _clicks_own_error_line(main.commands[args[0]], args[1:], f"llama-data {args[0]}")
    assert line.startswith("Error: ") and word in line
    result = CliRunner().invoke(main, args, prog_name="llama-data")
    assert (result.exit_code, result.stdout) == (2, "")
    end = "" if line.endswith((".", "?")) else "."  # click ends some messages without a stop
    assert result.stderr == f"{line}{end} Try 'llama-data {args[0]} --help'.\n"


def test_usage_error_of_the_installed_command_is_one_line():
    exe = Path(sys.executable).parent / "llama-data"
    proc = subprocess.run([exe, "--bogus"], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (2, "")
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert "--bogus" in lines[0] and lines[0].endswith(" Try 'llama-data --help'.")
    proc = subprocess.run([exe, "nosuch"], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.endswith("'nosuch'. Try 'llama-data --help'.\n")
    assert len(proc.stderr.splitlines()) == 1

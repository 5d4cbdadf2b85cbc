"""Operating-system errors are one line naming the path and the cause, never a traceback; a save
that fails on a full disk removes its partial directory at once, and a restart removes any
partial save before it writes anything.

The full and read-only disks are small tmpfs mounts when this machine lets the test mount (root
with CAP_SYS_ADMIN: this project's CI runs as root on such a machine); elsewhere the full disk is an ENOSPC injected at the rank's write
(``LLAMA_TRAIN_FAULT_ENOSPC_IN_SAVE``) and the read-only case is skipped, saying why.
"""

import contextlib
import subprocess

import pytest
from conftest import TINY, run_cli

ONE_PROCESS = ["--micro-batch-size", "4", "--max-steps", "2"]


def _one_line(result, code=2) -> str:
    assert result.returncode == code, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    return lines[0]


@contextlib.contextmanager
def tmpfs(path, size: str, read_only: bool = False):
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True, text=True)  # fmt: skip
    try:
        yield mounted.returncode == 0
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def test_output_that_is_a_file(tiny_corpus, tmp_path):
    (tmp_path / "file").write_text("x")
    line = _one_line(
        run_cli([*TINY, *ONE_PROCESS, "--data", tiny_corpus, "--output", tmp_path / "file"])
    )
    assert line == f"Error: --output {tmp_path / 'file'} is a file, not a directory"
    line = _one_line(
        run_cli([*TINY, *ONE_PROCESS, "--data", tiny_corpus, "--output", tmp_path / "file" / "run"])
    )
    assert (
        line
        == f"Error: --output {tmp_path / 'file' / 'run'}: {tmp_path / 'file'} is a file, not a directory"
    )


def test_output_on_a_read_only_file_system(tiny_corpus, tmp_path):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as mounted:
        if not mounted:
            pytest.skip("cannot mount a read-only tmpfs here (needs root with CAP_SYS_ADMIN)")
        for out in (tmp_path / "ro", tmp_path / "ro" / "run"):
            result = run_cli([*TINY, *ONE_PROCESS, "--data", tiny_corpus, "--output", out])
            assert _one_line(result) == f"Error: cannot write {out}: Read-only file system"


def test_disk_full_while_saving(tiny_corpus, tmp_path):
    """dp2 on a 1.5 MB disk: the run starts, its step-2 checkpoint (2.8 MB) does not fit. The cause
    is the one line shown, the partial save is gone at once; then a partial save that fills the
    disk is removed by the next start before it writes anything."""
    out = tmp_path / "disk"
    with tmpfs(out, "1536k") as mounted:
        env = {} if mounted else {"LLAMA_TRAIN_FAULT_ENOSPC_IN_SAVE": "2:1"}
        run = out / "run"
        result = run_cli([*TINY, "--data", tiny_corpus, "--output", run, "--strategy", "dp2",
                          "--micro-batch-size", "2", "--max-steps", "4", "--save-every", "2"],
                         env=env, timeout=240)  # fmt: skip
        line = _one_line(result)
        assert line.startswith(
            f"Error: cannot write checkpoint {run / 'checkpoints'}/step-00000002.tmp"
        )
        # the first save: there is no earlier checkpoint to keep, and the line says so
        assert line.endswith(
            "No space left on device (the partial save step-00000002.tmp is removed; this run "
            "has no complete checkpoint yet)"
        ), line
        assert not list((run / "checkpoints").glob("*.tmp"))
        assert not (run / "checkpoints" / "latest").exists()

        partial = run / "checkpoints" / "step-00000002.tmp"
        partial.mkdir()
        # fill the disk up to the last byte
        with contextlib.suppress(OSError), open(partial / "0_0.distcp", "wb") as fh:
            for _ in range(4096):
                fh.write(b"\0" * 1024)
                fh.flush()
        result = run_cli([*TINY, *ONE_PROCESS, "--data", tiny_corpus, "--output", run,
                          "--resume", "auto", "--save-every", "0", "--log-every", "1"],
                         env=env)  # fmt: skip
        assert "removed 1 partial checkpoint save(s)" in result.stdout
        assert "step 2/2" in result.stdout  # it trained: the space was back before it wrote
        assert "Traceback" not in result.stderr


def test_disk_full_at_a_later_save_names_the_checkpoint_kept(tiny_corpus, tmp_path):
    """One process, the save of step 4 fails as a full disk would: the line names the checkpoint
    that is kept (step 2), which is still the latest."""
    run = tmp_path / "run"
    result = run_cli([*TINY, "--data", tiny_corpus, "--output", run, "--micro-batch-size", "4",
                      "--max-steps", "4", "--save-every", "2"],
                     env={"LLAMA_TRAIN_FAULT_ENOSPC_IN_SAVE": "4:0"})  # fmt: skip
    assert _one_line(result) == (
        f"Error: cannot write checkpoint {run / 'checkpoints' / 'step-00000004.tmp'}/0_0.distcp: "
        "No space left on device (the partial save step-00000004.tmp is removed; the last "
        "complete checkpoint, step-00000002, is kept)"
    )
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    assert not list((run / "checkpoints").glob("*.tmp"))


def _classified(exc, cfg):
    from llama_train.errors import classify

    failure = classify(exc, cfg)
    return failure.code, failure.message, failure.consequence


def test_os_errors_are_told_apart_by_operation_and_errno(tmp_path):
    """A rank's OSError: a connection's is a crash that follows from another process (exit 1, so
    that the rank that died first keeps the blame), a read of an input says "cannot read", a write
    of the run directory (or an error only a write meets) "cannot write"; each used to be exit 2
    "cannot write"."""
    import errno
    import os

    from llama_model import Strategy
    from llama_train import RunRecord
    from llama_train.options import Data, Job, Model, RunConfig

    out, data = tmp_path / "out", tmp_path / "data" / "corpus"
    resumed = out / "checkpoints" / "step-00000002"
    options = RunConfig(job=Job(output=str(out)), model=Model(model_config="tiny", tokenizer="byte"),
                        data=Data(data=(str(data),)))  # fmt: skip
    cfg = RunRecord(options, Strategy(), seq_len=32, resume=str(resumed))

    def error(code, path=None):
        return OSError(code, os.strerror(code), *([str(path)] if path else []))

    assert _classified(ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), cfg) == (
        1, "network connection failed: Connection reset by peer", True
    )  # fmt: skip
    assert _classified(error(errno.EPIPE), cfg) == (
        1, "network connection failed: Broken pipe", True
    )  # fmt: skip
    assert _classified(error(errno.ECONNREFUSED), cfg)[0::2] == (1, True)
    assert _classified(TimeoutError("timed out"), cfg)[0::2] == (1, True)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
        assert _classified(error(code, out / "metrics.jsonl"), cfg) == (
            2, f"cannot write {out / 'metrics.jsonl'}: {os.strerror(code)}", False
        )  # fmt: skip
    assert _classified(error(errno.EACCES, f"{data}.bin"), cfg) == (
        2, f"cannot read {data}.bin: Permission denied", False
    )  # fmt: skip
    assert _classified(error(errno.EIO, resumed / "0_0.distcp"), cfg) == (
        2, f"cannot read {resumed / '0_0.distcp'}: Input/output error", False
    )  # fmt: skip
    assert _classified(error(errno.ENOSPC, "/dev/shm/x"), cfg)[:2] == (
        2, "cannot write /dev/shm/x: No space left on device"
    )  # fmt: skip
    assert _classified(error(errno.EMFILE), cfg) == (
        1, "OSError: [Errno 24] Too many open files", False
    )  # fmt: skip
    assert _classified(RuntimeError("pipeline peer rank 1: closed the connection"), cfg) == (
        1, "RuntimeError: pipeline peer rank 1: closed the connection", True
    )  # fmt: skip


@pytest.mark.parametrize(
    "kind, code, line",
    [
        ("connreset", 1, "Error: network connection failed: Connection reset by peer"),
        ("eacces-read", 2, "Error: cannot read {data}.bin: Permission denied"),
    ],
)
def test_a_rank_reports_a_network_error_and_a_read_error_as_such(tiny_corpus, tmp_path, kind,
                                                                 code, line):  # fmt: skip
    """Injected at step 2 of a one-process run: a dropped connection is a crash (exit 1), an
    unreadable data file "cannot read" (exit 2); both were "cannot write ..." with exit 2."""
    result = run_cli([*TINY, *ONE_PROCESS, "--data", tiny_corpus, "--output", tmp_path / "run"],
                     env={"LLAMA_TRAIN_FAULT_RAISE": f"2:0:{kind}"})  # fmt: skip
    assert _one_line(result, code) == line.format(data=tiny_corpus)

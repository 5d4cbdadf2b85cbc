"""The release checks of .ci/release.py, each shown failing on a package built to break it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CI = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CI))

import release  # noqa: E402


def make_package(
    root: Path,
    key: str,
    version: str = "0.1.0",
    *,
    dist: str | None = None,
    dependencies: tuple[str, ...] = (),
    extras: dict[str, list[str]] | None = None,
    changelog: str | None = None,
    setuptools: bool = False,
    static_version: bool = False,
) -> Path:
    """A package directory as the repository lays them out: pyproject, version.py, CHANGELOG."""
    path = root / key
    module = key.replace("-", "_")
    (path / "src" / module).mkdir(parents=True)
    (path / "src" / module / "version.py").write_text(f'__version__ = "{version}"\n')
    (path / "src" / module / "__init__.py").write_text(
        f"from {module}.version import __version__\n"
    )
    deps = ", ".join(f'"{d}"' for d in dependencies)
    lines = ["[project]", f'name = "{dist or key}"']
    lines += [f'version = "{version}"'] if static_version else ['dynamic = ["version"]']
    lines += [f"dependencies = [{deps}]"]
    if extras:
        lines.append("[project.optional-dependencies]")
        lines += [f"{k} = [{', '.join(repr(r) for r in v)}]" for k, v in extras.items()]
    if setuptools:
        lines += [
            "[tool.setuptools.dynamic]",
            f'version = {{ attr = "{module}.version.__version__" }}',
        ]
    elif not static_version:
        lines += ["[tool.hatch.version]", f'path = "src/{module}/version.py"']
    (path / "pyproject.toml").write_text("\n".join(lines) + "\n")
    (path / "CHANGELOG.md").write_text(changelog or f"# Changelog\n\n## {version}\n\n- First.\n")
    return path


def run_check(root: Path, needs=None, tag=None, dist=None):
    packages = {p.name: p for p in sorted(root.iterdir()) if (p / "pyproject.toml").exists()}
    return release.check(packages, needs or {}, tag, dist)


def test_a_consistent_pair_passes(tmp_path):
    make_package(tmp_path, "llama-b", "0.3.1", setuptools=True)
    make_package(tmp_path, "llama-a", dependencies=("llama-b>=0.3,<0.4",))
    report, problems, _ = run_check(tmp_path, needs={"llama-a": ("llama-b",)})
    assert problems == []
    assert report == ["llama-a 0.1.0: ok", "llama-b 0.3.1: ok"]


def test_version_written_in_pyproject(tmp_path):
    make_package(tmp_path, "llama-a", static_version=True)
    _, problems, _ = run_check(tmp_path)
    assert problems == [
        "llama-a: pyproject.toml writes the version itself; keep it in src/IMPORT/version.py"
    ]


def test_a_second_version_literal(tmp_path):
    path = make_package(tmp_path, "llama-a")
    (path / "src" / "llama_a" / "__init__.py").write_text('__version__ = "0.1.0"\n')
    _, problems, _ = run_check(tmp_path)
    assert problems == [
        "llama-a: src/llama_a/__init__.py assigns __version__ too (import it from "
        "src/llama_a/version.py)"
    ]


def test_not_a_pep440_version(tmp_path):
    make_package(tmp_path, "llama-a", "0.1-beta", changelog="## 0.1-beta\n")
    _, problems, _ = run_check(tmp_path)
    assert problems == ["llama-a: version '0.1-beta' is not in normalised public form"]


def test_changelog_without_the_current_version(tmp_path):
    make_package(tmp_path, "llama-a", "0.2.0", changelog="# Changelog\n\n## 0.1.0\n\n- First.\n")
    _, problems, _ = run_check(tmp_path)
    assert problems == [
        "llama-a: CHANGELOG.md's newest entry is 0.1.0, not the version 0.2.0 (which is nowhere)"
    ]


def test_changelog_may_start_with_unreleased_notes(tmp_path):
    text = "# Changelog\n\n## Unreleased\n\n- Next.\n\n## 0.2.0\n\n- Second.\n\n## 0.1.0\n"
    make_package(tmp_path, "llama-a", "0.2.0", changelog=text)
    assert run_check(tmp_path)[1] == []


def test_a_sibling_range_that_excludes_its_current_version(tmp_path):
    make_package(tmp_path, "llama-b", "0.2.0")
    make_package(tmp_path, "llama-a", dependencies=("llama-b>=0.1,<0.2",))
    _, problems, _ = run_check(tmp_path, needs={"llama-a": ("llama-b",)})
    assert problems == [
        "llama-a: dependencies: llama-b<0.2,>=0.1 excludes llama-b 0.2.0, the version in this "
        "repository"
    ]


def test_sibling_ranges_in_extras_are_checked_and_need_an_upper_bound(tmp_path):
    make_package(tmp_path, "llama-b", "0.2.0")
    make_package(
        tmp_path,
        "llama-a",
        extras={"cpu": ["llama-b[cpu]>=0.1,<0.2", "numpy>=1"], "test": ["llama-b>=0.1"]},
    )
    _, problems, _ = run_check(tmp_path, needs={"llama-a": ("llama-b",)})
    assert problems == [
        "llama-a: extra [cpu]: llama-b[cpu]<0.2,>=0.1 excludes llama-b 0.2.0, the version in "
        "this repository",
        "llama-a: extra [test]: llama-b>=0.1 has no upper bound (a range like >=0.1,<0.2 keeps a "
        "future incompatible llama-b out)",
    ]


def test_the_pypi_name_differs_from_the_directory(tmp_path):
    make_package(tmp_path, "ckpt", "1.0.0", dist="llama-ckpt-tools")
    make_package(tmp_path, "llama-a", dependencies=("llama_ckpt_tools>=1.0,<2",))
    _, problems, tagged = run_check(
        tmp_path, needs={"llama-a": ("ckpt",)}, tag="llama-ckpt-tools-v1.0.0"
    )
    assert problems == []
    assert tagged.key == "ckpt"


def test_needs_must_list_every_required_sibling(tmp_path):
    make_package(tmp_path, "llama-b")
    make_package(tmp_path, "llama-a", dependencies=("llama-b>=0.1,<0.2",))
    _, problems, _ = run_check(tmp_path, needs={"llama-a": ()})
    assert problems == [
        "llama-a: noxfile PACKAGES['llama-a'].needs lacks llama-b, which pyproject.toml requires"
    ]


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("llama-a-v0.1.0", None),
        ("llama-a-v0.1.1", "tag 'llama-a-v0.1.1' says version 0.1.1, but llama-a is 0.1.0"),
        ("llama-z-v0.1.0", "tag 'llama-z-v0.1.0' names no package (PyPI names: llama-a)"),
        ("llama-a-0.1.0", "tag 'llama-a-0.1.0' is not NAME-vX.Y.Z"),
    ],
)
def test_tags(tmp_path, tag, expected):
    make_package(tmp_path, "llama-a")
    _, problems, tagged = run_check(tmp_path, tag=tag)
    assert problems == ([] if expected is None else [expected])
    if expected is None:
        assert tagged.key == "llama-a"


def test_the_files_to_publish(tmp_path):
    make_package(tmp_path / "src", "llama-a")
    dist = tmp_path / "dist"
    dist.mkdir()
    for name in ("llama_a-0.1.0-py3-none-any.whl", "llama_a-0.1.0.tar.gz"):
        (dist / name).write_bytes(b"")
    assert run_check(tmp_path / "src", tag="llama-a-v0.1.0", dist=dist)[1] == []
    (dist / "llama_a-0.1.0.tar.gz").unlink()
    (dist / "llama_a-0.1.1-py3-none-any.whl").write_bytes(b"")
    assert run_check(tmp_path / "src", tag="llama-a-v0.1.0", dist=dist)[1] == [
        f"{dist}/llama_a-0.1.1-py3-none-any.whl: not llama_a-0.1.0",
        f"{dist}: expected one sdist llama_a-0.1.0.tar.gz, found none",
    ]


def test_this_repository_passes():
    proc = subprocess.run(
        [sys.executable, str(CI / "release.py")], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(": ok\n") == len(
        list((CI.parent / "packages").glob("*/pyproject.toml"))
    )


@pytest.mark.parametrize(
    ("wheel", "accepted"),
    [
        ("llama_a-0.1.0-py3-none-any.whl", True),
        ("llama_a-0.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True),
        ("llama_a-0.1.0-cp311-cp311-macosx_11_0_arm64.whl", True),
        ("llama_a-0.1.0-cp311-cp311-linux_x86_64.whl", False),
    ],
)
def test_which_wheels_pypi_takes(wheel, accepted):
    assert release.pypi_accepts(wheel) is accepted

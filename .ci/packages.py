"""Print the packages CI should test, as a JSON list, for a GitHub Actions matrix.

    python .ci/packages.py                      # every package
    python .ci/packages.py --changed-since REF  # packages changed since REF, plus their dependents

The list comes from the one PACKAGES table in noxfile.py, so no matrix is edited by hand. A package
counts as changed when a file under it changed, when a package it needs or its tests install
(``test_with``) changed, and when a package whose suite its session also runs (its ``consumers``)
changed; a change outside packages/ (noxfile,
CI, ruff config) selects every package, a change of a Markdown file outside packages/ none.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from noxfile import PACKAGES  # noqa: E402


def changed_packages(ref: str) -> list[str]:
    out = subprocess.run(
        ["git", "diff", "--name-only", f"{ref}...HEAD"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    by_dir = {pkg.directory: name for name, pkg in PACKAGES.items()}
    touched: set[str] = set()
    for path in out:
        parts = Path(path).parts
        if parts[:1] != ("packages",):
            if not path.endswith(".md"):
                return list(PACKAGES)
            continue
        if len(parts) > 1 and parts[1] in by_dir:
            touched.add(by_dir[parts[1]])
    return with_dependents(touched)


def with_dependents(touched: set[str], packages=PACKAGES) -> list[str]:
    """The touched packages and every package whose session tests one of them, in table order:
    packages that need a selected one (their tests install it) and packages whose session also runs
    a selected one's suite (``consumers``) or installs it for its tests (``test_with``), until
    nothing more is added."""
    selected = set(touched)
    grew = True
    while grew:
        grew = False
        for name, pkg in packages.items():
            if name not in selected and selected.intersection(
                (*pkg.needs, *pkg.consumers, *pkg.test_with)
            ):
                selected.add(name)
                grew = True
    return [name for name in packages if name in selected]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changed-since", metavar="REF")
    args = parser.parse_args()
    names = changed_packages(args.changed_since) if args.changed_since else list(PACKAGES)
    print(json.dumps(names))


if __name__ == "__main__":
    main()

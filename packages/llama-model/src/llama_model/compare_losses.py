"""Compare a run's per-step losses with a golden loss file.

    python -m llama_model.compare_losses RUN.jsonl GOLDEN.jsonl [--atol 1e-5] [--rtol 0]

Both files are JSON Lines, one object per step with at least ``"step"`` and ``"loss"`` (other keys,
such as ``"grad_norm"``, are ignored), the format a training log writes. Steps present in both are
compared; the golden file's steps must all be in the run. Exit status: 0 when every step is within
``atol + rtol·|golden|``, 1 when one is not (the table says which), 2 for a missing or malformed file.

Written with argparse, not click, so that numpy stays the package's only hard dependency.
"""

from __future__ import annotations

import argparse
import json
import math
import sys


class LossFileError(ValueError):
    pass


def read_losses(path: str) -> dict[int, float]:
    losses: dict[int, float] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    step, loss = int(record["step"]), float(record["loss"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    raise LossFileError(
                        f'{path}:{lineno}: expected a JSON object with "step" and "loss"'
                    ) from None
                losses[step] = loss
    except OSError as exc:
        raise LossFileError(f"cannot read {path}: {exc.strerror}") from None
    if not losses:
        raise LossFileError(f"{path} holds no loss records")
    return losses


def compare(run: dict[int, float], golden: dict[int, float], atol: float, rtol: float):
    """Rows (step, golden, run, |diff|, ok) for every golden step; raises if the run lacks one."""
    missing = sorted(set(golden) - set(run))
    if missing:
        raise LossFileError(f"the run has no loss for golden steps {missing[:5]}")
    rows = []
    for step in sorted(golden):
        diff = abs(run[step] - golden[step])
        ok = math.isfinite(run[step]) and diff <= atol + rtol * abs(golden[step])
        rows.append((step, golden[step], run[step], diff, ok))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llama_model.compare_losses", description=__doc__.split("\n")[1]
    )
    parser.add_argument("run", help="the run's losses (JSON Lines)")
    parser.add_argument("golden", help="the golden losses (JSON Lines)")
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--rtol", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        rows = compare(read_losses(args.run), read_losses(args.golden), args.atol, args.rtol)
    except LossFileError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    print(f"{'step':>6} {'golden':>14} {'run':>14} {'|diff|':>10}")
    for step, gold, got, diff, ok in rows:
        print(f"{step:>6} {gold:>14.8f} {got:>14.8f} {diff:>10.2e}{'' if ok else '  MISMATCH'}")
    bad = sum(not ok for *_, ok in rows)
    worst = max(diff for _, _, _, diff, _ in rows)
    print(
        f"{len(rows) - bad}/{len(rows)} steps within atol={args.atol:g} rtol={args.rtol:g}; max |diff| {worst:.2e}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

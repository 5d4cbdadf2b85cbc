"""Every setting a user can type: the configuration space of matrix.py, accepted or refused.

* Every combination is either accepted by the front process or refused there in one line; each
  distinct refusal, typed on the command line, exits 2 with that line before any process starts.
* The accepted cells train 2 steps and agree with one process: the pairwise covering set here
  (every pair of factor values at least once), every accepted cell with ``LLAMA_TRAIN_MATRIX=full``
  (``nox -s matrix``).
* The README's matrix table is the one matrix.py generates.

The bounds are those of llama-model's layout parity tests, measured in the same session: one
process trained with its global batch whole and again cut into 8 micro-batches differs only by
float32 summation order; a cell may differ from the one-process run by FACTORS times that floor,
and never by more than CEILINGS (so a change that inflates the floor cannot loosen the bounds past
them).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import matrix
import numpy as np
import pytest
from conftest import TINY, run_cli

FULL = os.environ.get("LLAMA_TRAIN_MATRIX") == "full"
OPS = ("rms_norm", "apply_rope", "swiglu", "causal_softmax")
COMMON = [*TINY, "--max-steps", "2", "--save-every", "0", "--seed", "7"]
README = Path(__file__).parents[3] / "README.md"
TABLE_BEGIN, TABLE_END = "<!-- matrix:begin -->", "<!-- matrix:end -->"

VERDICTS = matrix.classify(matrix.every_cell(), [*matrix.COMMON_FOR_TABLE])
ACCEPTED = [cell for cell, verdict in VERDICTS.items() if verdict is None]
CELLS = list(dict.fromkeys(c.run_key for c in ACCEPTED)) if FULL else matrix.pairwise(ACCEPTED)


@dataclass(frozen=True)
class Gaps:
    loss: float
    grad_norm: float
    params: float

    def scaled(self, factors: Gaps, ceilings: Gaps) -> Gaps:
        return Gaps(*(min(g * f, c) for g, f, c in zip(self.astuple(), factors.astuple(),
                                                        ceilings.astuple())))  # fmt: skip

    def astuple(self) -> tuple[float, float, float]:
        return self.loss, self.grad_norm, self.params

    def within(self, bounds: Gaps) -> bool:
        return all(g <= b for g, b in zip(self.astuple(), bounds.astuple()))


# FACTORS are llama-model's (its README, "Parity bounds"). Measured on the 2-core AMD EPYC VM
# (2026-12-05) over every accepted cell (LLAMA_TRAIN_MATRIX=full): the floor was one unit in the
# last place for the loss and the norm (4.8e-7 each), and 7.8e-6 (llama-ops) / 8.9e-6 (plain) for
# the weights and moments; the largest ratio of a cell's difference to it was 1.0 (loss), 4.3
# (norm) and 2.4 (weights), both under mp2 --to-static with llama-ops. The ceilings sit just above
# the bounds those floors give.
FACTORS = Gaps(loss=8, grad_norm=16, params=8)
CEILINGS = Gaps(loss=5e-6, grad_norm=1e-5, params=1e-4)


def _train(args, out: Path, env: dict | None = None):
    assert COMMON[COMMON.index("--lr") + 1] == "3e-3"  # the mutation test changes it by 1%
    result = run_cli([*COMMON, *args, "--output", out], timeout=600, env=env)
    assert result.returncode == 0, (out.name, result.stdout[-2000:], result.stderr[-3000:])
    return result


def _records(out: Path) -> dict[int, dict]:
    from llama_train import read_metrics

    return {r["step"]: r for r in read_metrics(str(out)) if r["split"] == "train"}


def _state(out: Path) -> dict[str, np.ndarray]:
    """Every tensor of the final checkpoint (weights and AdamW state), merged without Paddle."""
    from llama_ckpt import DistCheckpoint

    ckpt = DistCheckpoint(str(out / "checkpoints" / "step-00000002"))
    return {name: ckpt.read(name) for name in ckpt.names()}


def _gaps(out: Path, ref: Path) -> Gaps:
    got, want = _records(out), _records(ref)
    assert sorted(got) == sorted(want) == [1, 2]
    state, ref_state = _state(out), _state(ref)
    assert sorted(state) == sorted(ref_state)
    return Gaps(
        loss=max(abs(got[s]["loss"] - want[s]["loss"]) for s in want),
        grad_norm=max(abs(got[s]["grad_norm"] - want[s]["grad_norm"]) for s in want),
        params=max(float(np.abs(state[k] - ref_state[k]).max()) for k in ref_state),
    )


def _kernels_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("kernels: ")]
    assert len(lines) == 1, stdout[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def one_process(tiny_corpus, tmp_path_factory):
    """The one-process run of a global batch, taken whole (one micro-batch) or cut into several."""
    root = tmp_path_factory.mktemp("matrix-reference")
    cache: dict[tuple, Path] = {}

    def get(global_batch: int, kernels: str, micro_batches: int = 1) -> Path:
        key = (global_batch, kernels, micro_batches)
        if key not in cache:
            out = root / f"g{global_batch}-{kernels}-m{micro_batches}"
            mb = global_batch // micro_batches
            env = {"LLAMA_MODEL_NO_OPS": "1"} if kernels == "plain" else {}
            _train(["--data", tiny_corpus, "--micro-batch-size", str(mb),
                    "--grad-accum", str(micro_batches)], out, env)  # fmt: skip
            cache[key] = out
        return cache[key]

    return get


@pytest.fixture(scope="module")
def bounds(one_process):
    """Per kernels: FACTORS × the measured floor, capped by CEILINGS."""
    out = {}
    for kernels in matrix.KERNELS:
        whole = one_process(8, kernels)
        measured = _gaps(one_process(8, kernels, 8), whole)
        # Two float32 sums of one loss or norm in different orders differ by whole units in the
        # last place, so the floor of each is at least one: with 2 steps the measured difference
        # was often zero or 1/8 of it, which would make its multiple a coin toss.
        records = _records(whole).values()
        ulp = {q: float(np.spacing(np.float32(max(r[q] for r in records))))
               for q in ("loss", "grad_norm")}  # fmt: skip
        floor = Gaps(max(measured.loss, ulp["loss"]), max(measured.grad_norm, ulp["grad_norm"]),
                     measured.params)  # fmt: skip
        print(f"\nfloor ({kernels}, 8 micro-batches against 1): {measured}; with ulps: {floor}")
        assert measured.params > 0, measured
        # a floor past the ceilings is itself a regression (reduction order got much noisier)
        assert floor.within(Gaps(*(c / 2 for c in CEILINGS.astuple()))), floor
        out[kernels] = floor.scaled(FACTORS, CEILINGS)
    return out


def test_every_combination_is_accepted_or_refused_in_one_line():
    total, accepted, _ = matrix.counts(VERDICTS)
    assert total == len(matrix.LAYOUTS) * 2 * 2 * 3 * 3 * 2 == 1224
    assert 0 < accepted < total
    for cell, verdict in VERDICTS.items():
        assert verdict is None or (verdict and "\n" not in verdict), (cell.id, verdict)
    # what a tensor-parallel user types first (mp-only, the default micro-batch of one), and a
    # layout the tiny preset cannot take (4 does not divide its 2 key/value heads)
    first = matrix.Cell((1, 2, 1), 1, "llama-ops", "1F1B", "none", False)
    assert VERDICTS[first] is None
    mp4 = matrix.Cell((1, 4, 1), 1, "llama-ops", "1F1B", "none", False)
    assert VERDICTS[mp4] == "mp4 does not divide num_key_value_heads (2)"
    # the covering set covers every pair of values that an accepted cell has
    covered = set().union(*(matrix.pairs(c) for c in matrix.pairwise(ACCEPTED)))
    assert covered == set().union(*(matrix.pairs(c.run_key) for c in ACCEPTED))


def test_readme_shows_the_generated_matrix():
    text = README.read_text()
    begin, end = text.index(TABLE_BEGIN) + len(TABLE_BEGIN), text.index(TABLE_END)
    assert text[begin:end].strip() == matrix.table(VERDICTS), (
        "README's matrix table is stale: regenerate it with python packages/llama-train/tests/matrix.py"
    )


def test_each_refusal_is_one_line_before_any_process_starts(tiny_corpus, tmp_path):
    first_of = {}
    for cell, verdict in VERDICTS.items():
        if verdict is not None:
            first_of.setdefault(verdict, cell)
    assert len(first_of) >= 5, first_of
    for n, (verdict, cell) in enumerate(sorted(first_of.items())):
        out = tmp_path / f"refused-{n}"
        result = run_cli([*COMMON, "--data", tiny_corpus, *cell.args(), "--output", out],
                         env=cell.env())  # fmt: skip
        assert result.returncode == 2, (cell.id, result.stderr)
        assert result.stderr == f"Error: {verdict}\n", (cell.id, result.stderr)
        assert not out.exists(), cell.id  # refused before the run directory, let alone a rank


@pytest.mark.dist
@pytest.mark.parametrize("cell", CELLS, ids=[c.id for c in CELLS])
def test_cell_trains_as_one_process(cell, tiny_corpus, tmp_path, one_process, bounds):
    started = time.monotonic()
    out = tmp_path / "run"
    result = _train(["--data", tiny_corpus, *cell.args()], out, cell.env())
    line = _kernels_line(result.stdout)
    if cell.kernels == "plain":
        assert line.startswith("kernels: plain Paddle"), line
    elif cell.to_static:
        # a compiled program's dist values (the parameters are dist tensors in one process too)
        # take llama-ops' fallback, which it records as Paddle operators: no kernel call is counted
        assert line == "kernels: " + ", ".join(f"{op} not called" for op in OPS), line
    else:
        assert re.search(r"\bfused\b", line), line
    gaps = _gaps(out, one_process(cell.global_batch, cell.kernels))
    print(f"\n{cell.id}: {gaps} ({time.monotonic() - started:.1f} s)")
    assert gaps.within(bounds[cell.kernels]), (gaps, bounds[cell.kernels])


def test_the_bounds_fail_on_a_real_bug(tiny_corpus, tmp_path, one_process, bounds):
    """A learning rate 1% off (a schedule a step out, a wrong warmup) in an otherwise identical
    one-process run exceeds every bound."""
    out = tmp_path / "mutant"
    args = [*COMMON, "--data", tiny_corpus, "--micro-batch-size", "8", "--grad-accum", "1"]
    args[args.index("--lr") + 1] = "3.03e-3"
    result = run_cli([*args, "--output", out], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    gaps = _gaps(out, one_process(8, "llama-ops"))
    for got, bound in zip(gaps.astuple(), bounds["llama-ops"].astuple()):
        assert got > bound, (gaps, bounds["llama-ops"])

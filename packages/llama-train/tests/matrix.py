"""The configuration space of ``llama-train`` on the tiny preset, generated from its options.

Factors (every value a user can type for each):

* layout: dp, mp, pp each in {1, 2, 4}, at most 8 processes (17 layouts);
* micro-batch: ``--micro-batch-size`` 1 or 2;
* kernels: llama-ops' compiled kernels, or plain Paddle (``LLAMA_MODEL_NO_OPS=1``);
* schedule: ``--pp-schedule`` FThenB, 1F1B, or VPP with ``--virtual-pp-degree 2``;
* recompute: none, ``--recompute`` (full layers), ``--recompute --recompute-granularity attention``;
* compiled step: ``--to-static`` off or on.

An eager cell trains a global batch of 8 samples (``--global-batch-size 8``: the accumulation is
8 / (micro-batch × dp)); a compiled cell runs its global batch as one micro-batch (``--grad-accum 1``:
micro-batch × dp samples). With one stage the schedule is never consulted, so FThenB and 1F1B at
pp1 are one run (``Cell.run_key``).

``classify()`` sends each combination's command line through the command's own parser and the
checks the front process makes before it starts any process, so the accepted set is what
``llama-train`` accepts. ``pairwise()`` picks a covering set of the accepted cells: every pair of
factor values that occurs in an accepted cell occurs in a chosen one.

``python matrix.py`` prints the README's table.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

DEGREES = (1, 2, 4)
MAX_PROCESSES = 8
EAGER_GLOBAL_BATCH = 8

LAYOUTS = tuple(
    (dp, mp, pp)
    for pp in DEGREES
    for mp in DEGREES
    for dp in DEGREES
    if dp * mp * pp <= MAX_PROCESSES
)
MICRO_BATCHES = (1, 2)
KERNELS = ("llama-ops", "plain")
SCHEDULES = ("FThenB", "1F1B", "VPP")
RECOMPUTE = ("none", "full", "attention")
COMPILED = (False, True)
FACTOR_NAMES = ("layout", "micro_batch", "kernels", "schedule", "recompute", "to_static")


@dataclass(frozen=True)
class Cell:
    layout: tuple[int, int, int]  # dp, mp, pp
    micro_batch: int
    kernels: str
    schedule: str
    recompute: str
    to_static: bool

    @property
    def strategy(self) -> str:
        dp, mp, pp = self.layout
        return f"dp{dp}mp{mp}pp{pp}"

    @property
    def processes(self) -> int:
        dp, mp, pp = self.layout
        return dp * mp * pp

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.layout[0] if self.to_static else EAGER_GLOBAL_BATCH

    @property
    def id(self) -> str:
        step = "static" if self.to_static else "eager"
        kernels = "ops" if self.kernels == "llama-ops" else "plain"
        return (
            f"{self.strategy}-mb{self.micro_batch}-{kernels}-{self.schedule}-"
            f"rc_{self.recompute}-{step}"
        )

    @property
    def run_key(self) -> Cell:
        """The cell whose run this one is: at pp1 the schedule plays no part."""
        if self.layout[2] == 1 and self.schedule != "VPP":
            return Cell(self.layout, self.micro_batch, self.kernels, "1F1B", self.recompute,
                        self.to_static)  # fmt: skip
        return self

    def values(self) -> tuple:
        return tuple(getattr(self, name) for name in FACTOR_NAMES)

    def args(self) -> list[str]:
        """The options this cell sets (the common ones — data, model, steps — are the caller's)."""
        out = ["--strategy", self.strategy, "--micro-batch-size", str(self.micro_batch),
               "--pp-schedule", self.schedule]  # fmt: skip
        if self.schedule == "VPP":
            out += ["--virtual-pp-degree", "2"]
        if self.recompute != "none":
            out += ["--recompute", "--recompute-granularity", self.recompute]
        if self.to_static:
            out += ["--to-static", "--grad-accum", "1"]
        else:
            out += ["--global-batch-size", str(EAGER_GLOBAL_BATCH)]
        return out

    def env(self) -> dict[str, str]:
        return {"LLAMA_MODEL_NO_OPS": "1"} if self.kernels == "plain" else {}


def every_cell() -> list[Cell]:
    return [
        Cell(*values)
        for values in itertools.product(
            LAYOUTS, MICRO_BATCHES, KERNELS, SCHEDULES, RECOMPUTE, COMPILED
        )
    ]


def classify(cells, common_args) -> dict[Cell, str | None]:
    """cell -> None (accepted) or the one-line refusal ``llama-train`` gives, from the command's
    own parser and the checks it makes before starting any process. Kernels play no part in
    them, so each pair of cells that differ only there is checked once."""
    from llama_train.cli import run_command
    from llama_train.errors import TrainError
    from llama_train.options import resolve
    from llama_train.preparation import check_options

    verdicts: dict[Cell, str | None] = {}
    for cell in cells:
        twin = Cell(cell.layout, cell.micro_batch, KERNELS[0], cell.schedule, cell.recompute,
                    cell.to_static)  # fmt: skip
        if twin in verdicts:
            verdicts[cell] = verdicts[twin]
            continue
        ctx = run_command.make_context("run", [*common_args, *cell.args()])
        flags = {k: v for k, v in ctx.params.items() if k not in ("config_file", "print_config")}
        try:
            check_options(resolve({}, flags))
            verdicts[cell] = None
        except TrainError as exc:
            verdicts[cell] = str(exc)
    return verdicts


def pairs(cell: Cell) -> set:
    values = list(enumerate(cell.values()))
    return set(itertools.combinations(values, 2))


def pairwise(accepted: list[Cell]) -> list[Cell]:
    """A covering set, greedily: each pick covers the most pairs not yet covered (ties: the earlier
    cell, so the set is the same every time)."""
    runs = list(dict.fromkeys(cell.run_key for cell in accepted))
    uncovered = set().union(*(pairs(cell) for cell in runs))
    chosen: list[Cell] = []
    while uncovered:
        best = max(runs, key=lambda cell: len(pairs(cell) & uncovered))
        chosen.append(best)
        uncovered -= pairs(best)
    return chosen


# ------------------------------------------------------------------------------- the README table
COLUMNS = (("1F1B", False), ("FThenB", False), ("VPP", False), ("1F1B", True))
HEADERS = ("eager, 1F1B", "eager, FThenB", "eager, VPP (2 chunks)", "`--to-static`")


def _summary(verdicts: dict[Cell, str | None], cells: list[Cell]) -> str:
    """One table cell: ✓, or the refusal, or which micro-batches pass when that decides it."""
    refused = {cell: verdicts[cell] for cell in cells if verdicts[cell] is not None}
    if not refused:
        return "✓"
    reasons = "; ".join(sorted(set(refused.values()))).replace("|", "\\|")
    if len(refused) == len(cells):
        return "refused: " + reasons
    passing = sorted({c.micro_batch for c in cells if verdicts[c] is None})
    if any(verdicts[c] is not None for c in cells if c.micro_batch in passing):
        raise AssertionError(f"a refusal that the micro-batch does not decide: {reasons}")
    return f"✓ at micro-batch {', '.join(map(str, passing))}; else refused: {reasons}"


def table(verdicts: dict[Cell, str | None]) -> str:
    lines = ["| layout | processes | " + " | ".join(HEADERS) + " |",
             "|---|---:|" + "---|" * len(HEADERS)]  # fmt: skip
    for layout in LAYOUTS:
        row = []
        for schedule, static in COLUMNS:
            cells = [c for c in verdicts if c.layout == layout and c.schedule == schedule
                     and c.to_static == static]  # fmt: skip
            row.append(_summary(verdicts, cells))
        dp, mp, pp = layout
        lines.append(f"| dp{dp} mp{mp} pp{pp} | {dp * mp * pp} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def counts(verdicts: dict[Cell, str | None]) -> tuple[int, int, int]:
    """(combinations, accepted, distinct runs of the accepted)."""
    accepted = [c for c, v in verdicts.items() if v is None]
    return len(verdicts), len(accepted), len({c.run_key for c in accepted})


COMMON_FOR_TABLE = ["--model-config", "tiny", "--tokenizer", "byte", "--seq-len", "32",
                    "--data", "corpus", "--output", "out", "--max-steps", "2",
                    "--warmup-steps", "1"]  # fmt: skip


if __name__ == "__main__":
    verdicts = classify(every_cell(), COMMON_FOR_TABLE)
    print(table(verdicts))
    total, accepted, runs = counts(verdicts)
    chosen = pairwise([c for c, v in verdicts.items() if v is None])
    print(f"\n{total} combinations, {accepted} accepted ({runs} distinct runs); "
          f"the pairwise set: {len(chosen)} runs")  # fmt: skip

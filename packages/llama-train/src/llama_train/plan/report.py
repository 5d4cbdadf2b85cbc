"""What ``llama-train plan`` prints: a plan, a ranking of layouts, a check, and the command line
of a layout."""

from __future__ import annotations

from llama_train.plan.devices import GIB
from llama_train.plan.estimate import Plan
from llama_train.plan.job import Job
from llama_train.plan.ranks import TERM_NAMES, TERMS, THE, StageMemory

TOP = 10  # layouts a ranking shows


def gib(n: float) -> str:
    return f"{n / GIB:,.2f} GiB"


def seconds(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"{value * 1000:,.1f} ms" if value < 1 else f"{value:,.2f} s"


def _rank_range(ranks: tuple[int, ...]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}"


def describe_job(job: Job) -> str:
    s = job.strategy
    schedule = ""
    if s.pp > 1:
        schedule = f" ({s.schedule}{f', {s.virtual_pp_degree} chunks per rank' if s.schedule == 'VPP' else ''})"
    extras = [f"sharding stage {s.sharding_stage}"] if s.sharding_stage else []
    if s.sequence_parallel:
        extras.append("sequence parallel")
    extras.append(f"recompute {job.recompute or 'off'}")
    extras.append("bf16" if job.compute_dtype == "bfloat16" else "float32")
    return (
        f"{s} ({s.world_size} ranks), seq {job.seq_len} × micro-batch {job.micro_batch_size}, "
        f"{s.micro_batches} micro-batch(es){schedule}, global batch {job.global_batch}; "
        f"{', '.join(extras)}; kernels {job.kernels}"
    )


def _stage_lines(plan: Plan, stage: StageMemory) -> list[str]:
    job = plan.job
    s = job.strategy
    chunks = s.chunk_layers(job.config.num_hidden_layers)
    spans = [chunks[c] for c in s.stage_chunks(stage.stage)]
    held = ["layers " + ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in spans)]
    if 0 in s.stage_chunks(stage.stage):
        held.append("the embedding")
    if s.chunks - 1 in s.stage_chunks(stage.stage):
        held.append("the final norm and head")
    b = stage.bytes
    alive = sum(stage.in_flight.values())
    lines = [f"{_rank_range(stage.ranks)} (stage {stage.stage} of {s.pp}: {', '.join(held)})"]
    zero = s.sharding_stage
    rows = [
        ("parameters", f"{stage.parameters:,} ({gib(b['parameters'])}{', ÷ dp' if zero >= 3 else ''})"),
        ("gradients", f"{gib(b['gradients'])}{' (÷ dp)' if zero >= 2 else ''}"),
        ("optimizer", f"{gib(b['optimizer'])} (AdamW moments, float32{', ÷ dp' if zero >= 1 else ''})"),
        ("activations", f"{gib(b['activations'])} = {alive} micro-batch(es) in flight, "
                        f"{gib(stage.activations_per_micro_batch)} each"),
    ]  # fmt: skip
    for term in TERMS[4:]:
        if b[term]:
            rows.append((TERM_NAMES.get(term, term), gib(b[term])))
    verdict = "fits" if stage.fits else "DOES NOT FIT"
    rows.append(("total", f"{gib(b['total'])} of {gib(stage.budget)}: {verdict}"))
    width = max(len(name) for name, _ in rows)
    lines += [f"  {name:<{width}}  {text}" for name, text in rows]
    return lines


def step_time_line(plan: Plan) -> str:
    t = plan.time
    if t.total is None:
        return (f"step time: unknown (no peak for {plan.job.device.name}: give --peak-tflops); "
                f"{t.flops_per_rank / 1e12:,.3f} TFLOP on the slowest rank per step")  # fmt: skip
    return (
        f"step time: {seconds(t.total)} = compute {seconds(t.compute)} "
        f"({t.flops_per_rank / 1e12:,.1f} TFLOP on the slowest rank at {plan.mfu:.0%} MFU) + "
        f"bubble {seconds(t.bubble)} + mp {seconds(t.mp)} + dp {seconds(t.dp)} + pp "
        f"{seconds(t.pp)}; {plan.tokens_per_s:,.0f} tokens/s"
    )


def plan_lines(plan: Plan, model_name: str) -> list[str]:
    job = plan.job
    lines = [f"plan: {model_name}, {describe_job(job)}",
             f"device: {job.device.name}, {gib(plan.stages[0].budget)} per rank"]  # fmt: skip
    for stage in plan.stages:
        lines += _stage_lines(plan, stage)
    lines.append(step_time_line(plan))
    if plan.fits:
        lines.append("fits: every rank")
    else:
        lines.append(f"does not fit: {refusal(plan, plan.largest_rank)}")
    return lines


def refusal(plan: Plan, stage: StageMemory) -> str:
    """One line: which rank does not fit, by how much, and its largest term."""
    term = stage.largest
    return (
        f"rank {stage.ranks[0]} (stage {stage.stage}) needs {gib(stage.total)} but the "
        f"{plan.job.device.name} holds {gib(stage.budget)}; its largest term is {THE[term]} "
        f"({gib(stage.bytes[term])})"
    )


def command_line(job: Job, given: dict) -> str:
    """The ``llama-train`` command of a layout: the user's model, data and output, this layout."""
    s = job.strategy
    parts = ["llama-train", "--strategy", str(s)]
    for flag in ("model_config", "tokenizer", "init_from"):
        if given.get(flag):
            parts += [f"--{flag.replace('_', '-')}", given[flag]]
    parts += ["--seq-len", str(job.seq_len), "--micro-batch-size", str(job.micro_batch_size),
              "--global-batch-size", str(job.global_batch)]  # fmt: skip
    if s.pp > 1 and s.schedule != "1F1B":
        parts += ["--pp-schedule", s.schedule]
        if s.schedule == "VPP":
            parts += ["--virtual-pp-degree", str(s.virtual_pp_degree)]
    if s.sequence_parallel:
        parts.append("--sequence-parallel")
    if s.sharding_stage:
        parts += ["--sharding-stage", str(s.sharding_stage)]
    if job.recompute:
        parts.append("--recompute")
        if job.recompute != "full":
            parts += ["--recompute-granularity", job.recompute]
    if job.compute_dtype == "bfloat16":
        parts += ["--amp", "bf16"]
    data = given.get("data") or ("DATA",)
    for prefix in data:
        parts += ["--data", prefix]
    parts += ["--output", given.get("output") or "OUTPUT"]
    nodes = -(-s.world_size // job.device.per_node)
    if job.device.gpu and nodes > 1:
        parts += ["--nnodes", str(nodes), "--master", "HOST:PORT", "--node-rank", "R"]
    return " ".join(parts)


def ranking_lines(
    ranking, base: Job, devices: int, global_batch: int, model_name: str, given: dict
) -> list[str]:
    lines = [
        f"auto: {model_name} on {devices} × {base.device.name} ({gib(base.device.memory_bytes)}), "
        f"seq {base.seq_len} × micro-batch {base.micro_batch_size}, global batch "
        f"{global_batch}, {'bf16' if base.compute_dtype == 'bfloat16' else 'float32'}: "
        f"{ranking.considered} layouts, {ranking.fitting} fit"
    ]
    if not ranking.best:
        return lines
    header = ("#", "strategy", "micro-batches", "zero", "SP", "recompute", "largest rank", "step time",
              "tokens/s")  # fmt: skip
    rows = []
    for n, plan in enumerate(ranking.best[:TOP], 1):
        s = plan.job.strategy
        schedule = (
            f" {s.schedule}{s.virtual_pp_degree if s.schedule == 'VPP' else ''}" if s.pp > 1 else ""
        )
        tokens = plan.tokens_per_s
        rows.append((str(n), f"{s}{schedule}", str(s.micro_batches), str(s.sharding_stage),
                     "on" if s.sequence_parallel else "off", plan.job.recompute or "off",
                     gib(plan.largest_rank.total), seconds(plan.time.total),
                     "-" if tokens is None else f"{tokens:,.0f}"))  # fmt: skip
    lines += table(header, rows)
    lines.append("best: " + command_line(ranking.best[0].job, given))
    return lines


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Rows of cells under a header, each column as wide as its widest cell."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]
    ]

"""Trainer overhead, layout throughput and start-up time of ``llama-train`` (CPU, fp32).

1. Config "T" (vocab 8192, hidden 256, intermediate 688, 4 layers, 8 heads, seq 256, batch 8), one
   process: the bare ``ParallelModel`` step (forward_backward + AdamW step + clear_grad) against
   ``llama-train``'s step (the same plus the global-norm clip the trainer always does), each in its
   own subprocess, alternated, in this run. Two trainer figures: its step time as logged (data
   loading, logging and checkpoints excluded: the overhead the budget of 5% is about), and its wall
   time per step over the whole loop (data loading and logging included; no checkpoint is saved).
   Also the compiled step (``--to-static``) against the trainer's eager step.
2. The tiny preset, dp2mp2pp2 (8 processes through the launcher) against one process: tokens/s.
3. Time from the command to the first logged step, one process and 8 processes.
4. llama-ops' fused kernels against plain Paddle (``LLAMA_MODEL_NO_OPS=1``) in the same layouts,
   rounds alternated: config T in one process, under mp2 and under dp2mp2pp2 (8 processes; the
   kernels on each rank's shard of the dist tensors). Needs llama-ops installed
   (``nox -s bench`` installs it for this package); skipped with a line otherwise.
5. The pipeline bubble: dp2pp2 (4 processes, tiny preset, 4 micro-batches per dp rank) under FThenB,
   1F1B and VPP2 at equal global batch, rounds alternated, next to the textbook bubble fraction
   (p-1)/(m+p-1) (divided by v for VPP). ``--only-pipeline`` runs it alone.

    python bench_trainer.py [--steps 12] [--warmup 3] [--repeats 2] [--skip-dist] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from bench_figures import Figures

T_BATCH, T_SEQ = 8, 256


def _make_data(root: Path, vocab: int, tokens: int) -> str:
    import numpy as np

    from llama_data import IndexedDatasetWriter

    rng = np.random.default_rng(0)
    prefix = root / f"random{vocab}"
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        for _ in range(tokens // 1000):
            writer.add_document(rng.integers(0, vocab, size=1000))
    return str(prefix)


# ----------------------------------------------------------------------------------- workers
def worker_bare(steps: int, warmup: int, data: str) -> dict:
    import importlib

    import numpy as np

    from llama_data import GPTDataset
    from llama_model import configure_runtime

    # As the trainer's worker does: the runtime settings before paddle loads (MKL's generic path on
    # AMD CPUs is ~3x slower, and MKL reads the setting when Paddle loads it). Importing paddle
    # first made this loop slower than the trainer; so did importing ParallelModel first (it loads
    # Paddle: since llama-model applies the same settings then, only the order of this file).
    configure_runtime()
    from llama_model import ParallelModel, Strategy, preset

    paddle = importlib.import_module("paddle")

    ds = GPTDataset(data, seq_len=T_SEQ, num_samples=1, split="1")
    pm = ParallelModel.build(preset("bench-t"), Strategy(), seed=0)
    opt = paddle.optimizer.AdamW(learning_rate=1e-4, weight_decay=0.01, parameters=pm.parameters())
    times = []
    for step in range(warmup + steps):
        rows = np.stack([ds[step * T_BATCH + i] for i in range(T_BATCH)])
        start = time.perf_counter()
        pm.forward_backward(rows[:, :-1], rows[:, 1:])
        pm.clip_grad_norm(1.0)  # the trainer's step clips too (its default --clip-grad 1.0)
        opt.step()
        opt.clear_grad()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times)}


def worker_trainer(steps: int, warmup: int, data: str, out: str, to_static: bool = False) -> dict:
    from llama_train.metrics import read_metrics
    from llama_train.options import resolve
    from llama_train.preparation import prepare
    from llama_train.worker import run_worker

    flags = {"model_config": "bench-t", "data": (data,), "output": out, "seq_len": T_SEQ, "micro_batch_size": T_BATCH,
             "max_steps": warmup + steps, "lr": 1e-4, "split": "1", "eval_every": 0, "save_every": 0, "log_every": 1,
             "to_static": to_static}  # fmt: skip
    prepared = prepare(resolve({}, flags))
    start = time.perf_counter()
    try:
        run_worker(prepared.run)
    finally:
        prepared.lock.release()
    total = time.perf_counter() - start
    records = [r for r in read_metrics(out) if r["split"] == "train" and r["step"] > warmup]
    wall_steps = [r["time"] for r in read_metrics(out) if r["split"] == "train"]
    wall = (wall_steps[-1] - wall_steps[warmup - 1]) / steps
    return {
        "step_s": statistics.median(r["step_time_s"] for r in records),
        "wall_step_s": wall,
        "total_s": total,
    }


def _subprocess(kind: str, threads: int, *args) -> dict:
    # Set explicitly: importing paddle sets OMP_NUM_THREADS=1 where it is unset.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run(
        [sys.executable, __file__, "--worker", kind, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------- launches
def _cli() -> list[str]:
    script = Path(sys.executable).parent / "llama-train"
    return [str(script)] if script.exists() else [sys.executable, "-m", "llama_train"]


def timed_run(
    strategy: str,
    data: str,
    out: Path,
    steps: int,
    *,
    model: str = "tiny",
    seq: int = 64,
    micro_batch: int = 2,
    env: dict | None = None,
    extra: tuple = (),
) -> dict:
    """Runs the CLI (global batch 8); returns seconds to the first step line, the median logged
    step time and the kernels line of the run."""
    args = ["--strategy", strategy, "--model-config", model, "--tokenizer", "byte", "--data", data, "--output", str(out),
            "--seq-len", str(seq), "--micro-batch-size", str(micro_batch), "--global-batch-size", "8",
            "--max-steps", str(steps), "--eval-every", "0", "--save-every", "0", "--lr", "1e-3", "--split", "1",
            *extra]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*_cli(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )
    first, kernels = None, None
    for line in proc.stdout:
        if first is None and line.startswith("step 1/"):
            first = time.perf_counter() - start
        if line.startswith("kernels: "):
            kernels = line.strip().removeprefix("kernels: ")
    if proc.wait() != 0:
        raise RuntimeError(f"llama-train {strategy} failed (see {out}/logs)")
    from llama_train.metrics import read_metrics

    records = [r for r in read_metrics(str(out)) if r["split"] == "train" and r["step"] > 3]
    step = statistics.median(r["step_time_s"] for r in records)
    return {
        "first_step_s": first,
        "step_s": step,
        "tokens_per_s": 8 * seq / step,
        "total_s": time.perf_counter() - start,
        "kernels": kernels,
    }


# (label, extra flags, virtual degree) of part 5, on dp2pp2 with 4 micro-batches per dp rank
PIPELINE_SCHEDULES = (
    ("FThenB", ("--pp-schedule", "FThenB"), 1),
    ("1F1B", ("--pp-schedule", "1F1B"), 1),
    ("VPP2", ("--pp-schedule", "VPP", "--virtual-pp-degree", "2"), 2),
)


def bench_pipeline(data: str, root: Path, steps: int, rounds: int, figures) -> None:
    """The schedules' step times against the textbook bubble, alternated, median of the rounds."""
    p, m = 2, 4  # stages; micro-batches per dp rank (global batch 8 = dp2 x micro-batch 1 x 4)
    times: dict[str, list[float]] = {label: [] for label, _, _ in PIPELINE_SCHEDULES}
    for rnd in range(rounds):
        for label, flags, _ in PIPELINE_SCHEDULES:
            env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            out = root / f"pipe-{label}-{rnd}"
            result = timed_run("dp2pp2", data, out, steps, micro_batch=1, env=env, extra=flags)
            times[label].append(result["step_s"])
    print(f"\nPipeline schedules, tiny preset, dp2pp2 (4 processes), seq 64, global batch 8 "
          f"(p={p}, m={m} per dp rank), median of {rounds} alternated rounds")  # fmt: skip
    print(f"{'schedule':10s} {'step ms':>9s} {'vs FThenB':>10s} {'textbook bubble':>16s}")
    base = statistics.median(times["FThenB"])
    for label, _, v in PIPELINE_SCHEDULES:
        step = statistics.median(times[label])
        bubble = (p - 1) / (m + p - 1) / v
        print(f"{label:10s} {step * 1e3:9.1f} {base / step:9.2f}x {bubble:16.2f}")
        if label != "FThenB":
            figures.add("tiny preset, dp2pp2, seq 64, global batch 8, 4 micro-batches", "step time",
                        "ms", f"llama-train {label}", step * 1e3, peer="llama-train FThenB",
                        peer_value=base * 1e3, better="lower")  # fmt: skip
    print("(4 processes on 2 cores: the stages share the cores, so the bubble's idle time is partly "
          "filled by the other stages' work; on dedicated devices it is not)")  # fmt: skip


# (label, strategy, model, seq, micro-batch, OMP threads per process)
KERNEL_LAYOUTS = (
    ("config T, 1 process", "dp1", "bench-t", 256, 8, 2),
    ("config T, mp2 (2 processes)", "mp2", "bench-t", 256, 8, 1),
    ("config T, dp2mp2pp2 (8 processes)", "dp2mp2pp2", "bench-t", 256, 2, 1),
)


def bench_kernels(data: str, root: Path, steps: int, rounds: int, figures) -> None:
    """Fused kernels against plain Paddle per layout, alternated, median of the rounds."""
    try:
        import llama_ops
    except ImportError:
        print("\nfused vs plain Paddle: skipped (llama-ops is not installed here)")
        return
    if not llama_ops.backend().startswith("fused"):
        print(f"\nfused vs plain Paddle: skipped (llama-ops {llama_ops.backend()})")
        return
    print(
        f"\nllama-ops fused kernels vs plain Paddle, global batch 8, median of {rounds} alternated rounds"
    )
    print(f"{'':32s} {'plain ms':>9s} {'fused ms':>9s} {'speed-up':>9s}  kernels (fused run)")
    for label, strategy, model, seq, micro, threads in KERNEL_LAYOUTS:
        times: dict[str, list[float]] = {"plain": [], "fused": []}
        kernels = None
        for rnd in range(rounds):
            for variant in ("plain", "fused"):
                env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
                if variant == "plain":
                    env["LLAMA_MODEL_NO_OPS"] = "1"
                out = root / f"k-{strategy}-{variant}-{rnd}"
                result = timed_run(strategy, data, out, steps, model=model, seq=seq,
                                   micro_batch=micro, env=env)  # fmt: skip
                times[variant].append(result["step_s"])
                if variant == "fused":
                    kernels = result["kernels"]
        plain, fused = statistics.median(times["plain"]), statistics.median(times["fused"])
        print(f"{label:32s} {plain * 1e3:9.1f} {fused * 1e3:9.1f} {plain / fused:9.2f}x  {kernels}")
        figures.add(f"{label}, seq {seq}, global batch 8", "step time", "ms",
                    "llama-train with llama-ops (fused kernels)", fused * 1e3,
                    peer="llama-train, plain Paddle", peer_value=plain * 1e3, better="lower")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dist-steps", type=int, default=30)
    ap.add_argument("--skip-dist", action="store_true")
    ap.add_argument("--kernel-steps", type=int, default=15, help="steps per run of part 4")
    ap.add_argument("--kernel-rounds", type=int, default=2, help="alternated rounds of part 4")
    ap.add_argument("--only-kernels", action="store_true", help="run part 4 alone")
    ap.add_argument("--only-pipeline", action="store_true", help="run part 5 alone")
    ap.add_argument("--pipeline-steps", type=int, default=20, help="steps per run of part 5")
    ap.add_argument("--pipeline-rounds", type=int, default=2, help="alternated rounds of part 5")
    ap.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("OMP_NUM_THREADS", 2)),
        help="math threads of the one-process workers (part 1); default OMP_NUM_THREADS, else 2",
    )
    ap.add_argument("--worker", nargs="+")
    args = ap.parse_args()
    if args.worker:
        kind, *rest = args.worker
        result = (
            worker_bare(int(rest[0]), int(rest[1]), rest[2])
            if kind == "bare"
            else worker_trainer(int(rest[0]), int(rest[1]), rest[2], rest[3], kind == "compiled")
        )
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        figures = Figures(__file__, vars(args))
        data_bytes = _make_data(root, 256, 200_000)
        if args.only_kernels:
            bench_kernels(data_bytes, root, args.kernel_steps, args.kernel_rounds, figures)
            return
        if args.only_pipeline:
            bench_pipeline(data_bytes, root, args.pipeline_steps, args.pipeline_rounds, figures)
            return
        data_t = _make_data(root, 8192, 400_000)
        bare, trainer, compiled = [], [], []
        for rep in range(args.repeats):
            bare.append(_subprocess("bare", args.threads, args.steps, args.warmup, data_t))
            trainer.append(
                _subprocess(
                    "trainer", args.threads, args.steps, args.warmup, data_t, root / f"t{rep}"
                )
            )
            compiled.append(
                _subprocess(
                    "compiled", args.threads, args.steps, args.warmup, data_t, root / f"c{rep}"
                )
            )
        b = statistics.median(r["step_s"] for r in bare)
        t = statistics.median(r["step_s"] for r in trainer)
        c = statistics.median(r["step_s"] for r in compiled)
        w = statistics.median(r["wall_step_s"] for r in trainer)
        tokens = T_BATCH * T_SEQ
        print(
            f"\nConfig T, one process, fp32, {args.threads} threads, {args.steps} timed steps after {args.warmup}, median of {args.repeats} runs each"
        )
        print(f"{'':44s} {'step (ms)':>10s} {'tokens/s':>10s} {'vs bare':>8s}")
        print(f"{'bare ParallelModel step':44s} {b * 1e3:10.1f} {tokens / b:10.0f} {1.0:8.3f}")
        print(
            f"{'llama-train step (clip included)':44s} {t * 1e3:10.1f} {tokens / t:10.0f} {t / b:8.3f}"
        )
        print(
            f"{'llama-train wall per step (data, logging)':44s} {w * 1e3:10.1f} {tokens / w:10.0f} {w / b:8.3f}"
        )
        print(
            f"{'llama-train --to-static step (clip included)':44s} {c * 1e3:10.1f} {tokens / c:10.0f} {c / b:8.3f}"
        )
        print(
            f"trainer overhead: {100 * (t / b - 1):+.1f}% (step), {100 * (w / b - 1):+.1f}% (wall); budget +5%"
        )
        case = f"config T, one process, batch {T_BATCH} x seq {T_SEQ}"
        for metric, label, ours in (
            ("step time", "llama-train step (clip included)", t),
            ("wall time per step", "llama-train loop (data, logging)", w),
        ):
            figures.add(case, metric, "ms", label, ours * 1e3, peer="bare ParallelModel step",
                        peer_value=b * 1e3, better="lower")  # fmt: skip
        figures.add(case, "step time", "ms", "llama-train --to-static step (clip included)", c * 1e3,
                    peer="llama-train eager step (clip included)", peer_value=t * 1e3, better="lower")  # fmt: skip
        if args.skip_dist:
            return
        one = timed_run("dp1", data_bytes, root / "one", args.dist_steps)
        eight = timed_run("dp2mp2pp2", data_bytes, root / "eight", args.dist_steps)
        print("\nTiny preset, seq 64, global batch 8, fp32; median logged step after 3")
        print(
            f"{'':28s} {'step (ms)':>10s} {'tokens/s':>10s} {'ratio':>7s} {'to 1st step (s)':>16s}"
        )
        print(
            f"{'1 process':28s} {one['step_s'] * 1e3:10.1f} {one['tokens_per_s']:10.0f} {1.0:7.2f} {one['first_step_s']:16.1f}"
        )
        print(f"{'dp2mp2pp2, 8 processes':28s} {eight['step_s'] * 1e3:10.1f} {eight['tokens_per_s']:10.0f} "
              f"{eight['tokens_per_s'] / one['tokens_per_s']:7.2f} {eight['first_step_s']:16.1f}")  # fmt: skip
        print(
            f"(CPU cores: {os.cpu_count()}; 8 processes on few cores measure overhead, not scaling)"
        )
        for metric, unit, key, better in (
            ("training throughput", "tokens/s", "tokens_per_s", "higher"),
            ("time to first step", "s", "first_step_s", "lower"),
        ):
            figures.add("tiny preset, seq 64, global batch 8", metric, unit,
                        "llama-train dp2mp2pp2, 8 processes", eight[key],
                        peer="llama-train, 1 process", peer_value=one[key], better=better)  # fmt: skip

        bench_kernels(data_bytes, root, args.kernel_steps, args.kernel_rounds, figures)
        bench_pipeline(data_bytes, root, args.pipeline_steps, args.pipeline_rounds, figures)


if __name__ == "__main__":
    main()

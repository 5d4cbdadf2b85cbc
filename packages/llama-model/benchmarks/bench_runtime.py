"""What llama-model's runtime settings are worth to Paddle's matrix products: a float32 matmul timed
in a process where llama-model loaded Paddle (its settings applied, as ``configure_runtime()`` does)
against one where the application imported paddle first (nothing applied: the case of the import
warning). On an AMD CPU Paddle's old MKL then takes its generic code path; elsewhere the two match.

Each measurement is its own subprocess with the same thread count; the two alternate for
``--rounds`` rounds and their timings are pooled. Reported: the median milliseconds per product and
the factor (how many times faster with the settings).

    python bench_runtime.py [--sizes 1024] [--threads 1 2] [--rounds 3] [--repeats 9]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from bench_figures import Figures

KINDS = {
    "configured": "llama-model loads Paddle (settings applied)",
    "paddle-first": "paddle imported first (nothing applied)",
}


def worker(kind: str, n: int, repeats: int) -> dict:
    import importlib
    import warnings

    warnings.simplefilter("ignore", RuntimeWarning)  # the import warning, for paddle-first
    if kind == "paddle-first":
        importlib.import_module("paddle")
    from llama_model import LlamaForCausalLM  # noqa: F401  (loads Paddle, if not loaded)
    from llama_model.runtime import lost_settings

    paddle = importlib.import_module("paddle")
    a, b = paddle.randn([n, n]), paddle.randn([n, n])
    for _ in range(3):
        paddle.matmul(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(5):
            c = paddle.matmul(a, b)
        float(c[0, 0])
        times.append((time.perf_counter() - start) / 5)
    return {"times": times, "lost": lost_settings()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[1024])
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--worker", choices=sorted(KINDS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.sizes[0], args.repeats)))
        return

    figures = Figures(__file__, vars(args))
    print(f"{'matmul':>12} {'threads':>7} {'process':<46} {'median ms':>9} {'factor':>7}")
    for n in args.sizes:
        for threads in args.threads:
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            for name in ("MKL_DEBUG_CPU_TYPE", "GOMP_SPINCOUNT"):
                env.pop(name, None)  # the comparison is about who sets them
            pooled = {kind: [] for kind in KINDS}
            lost = []
            for _ in range(args.rounds):
                for kind in KINDS:
                    cmd = [sys.executable, __file__, "--worker", kind, "--sizes", str(n),
                           "--repeats", str(args.repeats)]  # fmt: skip
                    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                    if proc.returncode:
                        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
                    result = json.loads(proc.stdout.strip().splitlines()[-1])
                    pooled[kind] += result["times"]
                    lost = result["lost"] if kind == "paddle-first" else lost
            ms = {kind: statistics.median(t) * 1e3 for kind, t in pooled.items()}
            for kind in KINDS:
                factor = ms["paddle-first"] / ms[kind]
                print(
                    f"{n:>5}x{n:<6} {threads:>7} {KINDS[kind]:<46} {ms[kind]:>9.2f} {factor:>6.2f}x"
                )
            print(f"{'':>21} lost when paddle is imported first: {', '.join(lost) or 'nothing'}")
            figures.add(
                f"{n}x{n} float32 matmul, {threads} thread{'s' if threads > 1 else ''}",
                "matmul time",
                "ms",
                KINDS["configured"],
                ms["configured"],
                peer=KINDS["paddle-first"],
                peer_value=ms["paddle-first"],
                better="lower",
            )


if __name__ == "__main__":
    main()

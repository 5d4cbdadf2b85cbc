"""Forward+backward time of each fused operator against its pure-Paddle fallback, same run, same
inputs, LLaMA-7B-like shapes scaled to a CPU box (tokens 2048; hidden 4096; 32 heads x 128).

    python benchmarks/bench_ops.py [--threads 2] [--repeats 7]

Prints one table: median milliseconds per fwd+bwd step and the speed-up (fallback / fused). Both run
with the same OpenMP thread count (Paddle's own CPU kernels and the fused kernels alike).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from bench_figures import Figures


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=2048)
    return ap.parse_args()


ARGS = _parse()
# Paddle sets OMP_NUM_THREADS=1 at import unless it is already set: set it first. Then llama_ops
# before paddle: it is what loads Paddle, so it applies the runtime settings just before (libgomp
# not spinning between the fused kernels and Paddle's matmuls; MKL's fast path on AMD CPUs).
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)

import llama_ops  # noqa: E402, I001
import numpy as np  # noqa: E402
import paddle  # noqa: E402

paddle.set_num_threads(ARGS.threads) if hasattr(paddle, "set_num_threads") else None


def _inputs(shapes, seed, frozen=()):
    rng = np.random.default_rng(seed)
    ts = []
    for i, s in enumerate(shapes):
        t = paddle.to_tensor(rng.normal(size=s).astype("float32"))
        t.stop_gradient = i in frozen
        ts.append(t)
    return ts


def _step(fn, inputs, probes):
    outs = fn(*inputs)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    paddle.autograd.backward(outs, probes)
    for t in inputs:
        t.clear_gradient(False) if t.grad is not None else None


def _median_ms(fn, inputs, probes, repeats):
    for _ in range(2):
        _step(fn, inputs, probes)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _step(fn, inputs, probes)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> int:
    if not llama_ops.backend().startswith("fused"):
        print(f"llama-ops has no compiled kernels here: {llama_ops.backend()}", file=sys.stderr)
        return 1
    n, h, heads, hd, inner = ARGS.tokens, 4096, 32, 128, 4096
    cases = [
        ("rms_norm", f"x [{n}, {h}]", lambda m: m.rms_norm, [(n, h), (h,)], [(n, h)], (), 2.0),
        (
            "apply_rope",
            f"q,k [1, {n}, {heads}, {hd}]",
            lambda m: m.apply_rope,
            [(1, n, heads, hd), (1, n, heads, hd), (n, hd), (n, hd)],
            [(1, n, heads, hd), (1, n, heads, hd)],
            (2, 3),
            2.0,
        ),
        (
            "swiglu",
            f"gate,up [{n}, {inner}]",
            lambda m: m.swiglu,
            [(n, inner), (n, inner)],
            [(n, inner)],
            (),
            1.5,
        ),
        (
            "swiglu (packed)",
            f"gate_up [{n}, {2 * inner}]",
            lambda m: m.swiglu,
            [(n, 2 * inner)],
            [(n, inner)],
            (),
            1.5,
        ),
        (
            "causal_softmax",
            "scores [8, 8, 256, 256]",  # config T's attention: batch 8, 8 heads, seq 256
            lambda m: lambda x: m.causal_softmax(x, 32**-0.5),
            [(8, 8, 256, 256)],
            [(8, 8, 256, 256)],
            (),
            2.0,
        ),
    ]
    print(
        f"llama-ops {llama_ops.__version__}, Paddle {paddle.__version__}, backend {llama_ops.backend()}, "
        f"OMP threads {ARGS.threads}, median of {ARGS.repeats} fwd+bwd steps"
    )
    header = f"{'op':<16} {'shape':<26} {'fallback ms':>12} {'fused ms':>10} {'speed-up':>9} {'target':>7}"
    print(header)
    print("-" * len(header))
    ok = True
    figures = Figures(__file__, vars(ARGS))
    for name, shape, pick, in_shapes, out_shapes, frozen, target in cases:
        inputs = _inputs(in_shapes, 0, frozen)
        probes = _inputs(out_shapes, 1, range(len(out_shapes)))
        slow = _median_ms(pick(llama_ops.fallback), inputs, probes, ARGS.repeats)
        fast = _median_ms(pick(llama_ops.fused), inputs, probes, ARGS.repeats)
        ratio = slow / fast
        ok &= ratio >= target
        print(f"{name:<16} {shape:<26} {slow:>12.1f} {fast:>10.1f} {ratio:>8.2f}x {target:>6.1f}x")
        figures.add(
            f"{name}, {shape}",
            "fwd+bwd time",
            "ms",
            f"llama-ops {llama_ops.backend()}",
            fast,
            peer="llama-ops fallback (Paddle ops)",
            peer_value=slow,
            better="lower",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

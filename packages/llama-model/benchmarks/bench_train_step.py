"""Training-step throughput of config "T" on CPU: llama-model (Paddle) vs transformers (torch eager).

Config T: vocab 8192, hidden 256, intermediate 688, 4 layers, 8 heads, kv heads 8 and 2, seq 256,
batch 8. One step = forward + backward + AdamW, fp32, one process. Each measurement runs in its own
subprocess with the same thread count (OMP/MKL threads set before the framework is imported:
Paddle pins OMP_NUM_THREADS=1 at import unless it is already set). The workers of the two
frameworks alternate for ``--rounds`` rounds (a shared machine's load then hits both alike) and
their timed steps are pooled. Reported: the median step time (and the fastest), tokens/s =
batch·seq / median, and the ratio to torch.

    python bench_train_step.py [--threads 2] [--steps 10] [--warmup 3] [--rounds 2] [--static] [--mkl-default]
        [--gomp-spin] [--paddle-first] [--torch-heap] [--torch-compile]

The Paddle worker applies llama-model's runtime settings first thing (``configure_runtime()``, as the
llama-train worker does); importing llama-model's Paddle-backed names first would apply the same.
``--mkl-default``, ``--gomp-spin`` and ``--paddle-first`` add llama-model without one of them, or
without both (paddle imported by the application before llama-model: what the import warning's
factor says). ``--torch-heap`` adds torch run with the glibc malloc settings llama_model applies to
its own process (freed memory kept in the heap): what torch would gain from the same allocator
policy; ``--torch-compile`` adds torch with the model under ``torch.compile`` (inductor, compiled
during the warm-up steps).
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

BATCH, SEQ = 8, 256
CONFIG = dict(
    vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
    num_attention_heads=8, max_position_embeddings=SEQ, rms_norm_eps=1e-6,
)  # fmt: skip


def _batches(n, vocab, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    for _ in range(n):
        ids = rng.integers(0, vocab, size=(BATCH, SEQ + 1))
        yield ids[:, :-1], ids[:, 1:]


def _time_steps(step, batches, warmup):
    times = []
    for i, (ids, labels) in enumerate(batches):
        start = time.perf_counter()
        step(ids, labels)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def worker_paddle(kv, steps, warmup, threads, static, paddle_first=False):
    # The runtime settings first, as the llama-train worker does: MKL and libgomp read theirs when
    # Paddle loads them. (Until this was fixed, ParallelModel was imported first: it loads Paddle,
    # and on an AMD EPYC Zen 4 the step took 5.9 s instead of 0.36 s.)
    import importlib
    import warnings

    if paddle_first:  # the application's mistake the import warning is about
        importlib.import_module("paddle")
        warnings.simplefilter("ignore", RuntimeWarning)
    from llama_model import configure_runtime

    if not paddle_first:
        configure_runtime()
    from llama_model import LlamaConfig, ParallelModel, Strategy, kernel_backend

    paddle = importlib.import_module("paddle")

    cfg = LlamaConfig(**CONFIG, num_key_value_heads=kv)
    pm = ParallelModel.build(cfg, Strategy(), seed=0)
    opt = paddle.optimizer.AdamW(learning_rate=1e-4, weight_decay=0.01, parameters=pm.parameters())
    if static:
        compiled = pm.to_static(opt, BATCH, SEQ)

        def step(ids, labels):
            compiled(ids, labels)
    else:

        def step(ids, labels):
            pm.forward_backward(ids, labels)
            opt.step()
            opt.clear_grad()

    times = _time_steps(step, _batches(warmup + steps, cfg.vocab_size), warmup)
    return {"times": times, "backend": kernel_backend()}


def worker_torch(kv, steps, warmup, threads, compile_model=False):
    import torch
    import transformers

    torch.set_num_threads(threads)
    cfg = transformers.LlamaConfig(**CONFIG, num_key_value_heads=kv, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    run = torch.compile(model) if compile_model else model
    # Compiled in the warm-up steps: 3 more of them, since the first timed steps after the usual 3
    # still took 1-4x the settled step (the backward's compilation, caches).
    warmup += 3 if compile_model else 0

    def step(ids, labels):
        # labels given already shifted: pad so transformers' internal shift lines up
        out = run(input_ids=torch.from_numpy(ids), labels=torch.from_numpy(ids))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = _time_steps(step, _batches(warmup + steps, cfg.vocab_size), warmup)
    return {"times": times, "attn": model.config._attn_implementation}


def _run_worker(kind, kv, args):
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if kind == "paddle-mkl-default":
        # set (empty) by the user, so llama_model leaves Paddle's MKL on its default CPU dispatch
        env["MKL_DEBUG_CPU_TYPE"] = ""
        kind = "paddle"
    if kind == "paddle-gomp-spin":
        # set (empty) by the user, so libgomp keeps its default spinning
        env["GOMP_SPINCOUNT"] = ""
        kind = "paddle"
    if kind == "torch-heap":
        # glibc's environment twin of the mallopt calls llama_model makes at import (_paddle.py)
        env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(2**31 - 1))
        kind = "torch"
    cmd = [sys.executable, __file__, "--worker", kind, "--kv", str(kv), "--threads", str(args.threads),
           "--steps", str(args.steps), "--warmup", str(args.warmup)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="alternate the frameworks this many times and pool their steps (evens out a shared machine's load)",
    )
    ap.add_argument("--kv", type=int, nargs="*", default=[8, 2])
    ap.add_argument("--static", action="store_true", help="also time the dist.to_static step")
    ap.add_argument(
        "--mkl-default",
        action="store_true",
        help="also time llama-model with Paddle's MKL left on its default dispatch (slow on AMD)",
    )
    ap.add_argument(
        "--gomp-spin",
        action="store_true",
        help="also time llama-model with libgomp left spinning (GOMP_SPINCOUNT not set to 0)",
    )
    ap.add_argument(
        "--paddle-first",
        action="store_true",
        help="also time llama-model in a process that imported paddle before llama-model",
    )
    ap.add_argument(
        "--torch-compile",
        action="store_true",
        help="also time torch with the model under torch.compile (inductor; compiled in the warm-up)",
    )
    ap.add_argument(
        "--torch-heap",
        action="store_true",
        help="also time torch with glibc malloc keeping freed memory, as llama_model sets for Paddle",
    )
    ap.add_argument(
        "--worker",
        choices=["paddle", "paddle-static", "paddle-first", "torch", "torch-compile"],
        help=argparse.SUPPRESS,
    )
    args = ap.parse_args()

    if args.worker:
        kv = args.kv[0]
        if args.worker in ("torch", "torch-compile"):
            result = worker_torch(
                kv, args.steps, args.warmup, args.threads, args.worker == "torch-compile"
            )
        else:
            result = worker_paddle(
                kv,
                args.steps,
                args.warmup,
                args.threads,
                args.worker == "paddle-static",
                paddle_first=args.worker == "paddle-first",
            )
        print(json.dumps(result))
        return

    tokens = BATCH * SEQ
    kinds = ["torch", "paddle"]
    kinds += ["paddle-static"] if args.static else []
    kinds += ["paddle-mkl-default"] if args.mkl_default else []
    kinds += ["paddle-gomp-spin"] if args.gomp_spin else []
    kinds += ["paddle-first"] if args.paddle_first else []
    kinds += ["torch-heap"] if args.torch_heap else []
    kinds += ["torch-compile"] if args.torch_compile else []
    labels = {
        "torch": "torch eager ({attn})",
        "paddle": "llama-model ({backend})",
        "paddle-static": "llama-model to_static",
        "paddle-mkl-default": "llama-model, MKL default",
        "paddle-gomp-spin": "llama-model, libgomp spinning",
        "paddle-first": "llama-model, paddle imported first",
        "torch-heap": "torch eager, malloc kept",
        "torch-compile": "torch.compile (inductor)",
    }
    print(
        f"config T, batch {BATCH} x seq {SEQ}, fp32, fwd+bwd+AdamW, {args.threads} threads; "
        f"{args.rounds} alternating rounds x {args.steps} steps after {args.warmup} warm-up"
    )
    print(
        f"{'kv heads':>8} {'framework':<28} {'median ms':>10} {'min ms':>8} {'tokens/s':>9} {'vs torch':>9}"
    )
    figures = Figures(__file__, vars(args))
    for kv in args.kv:
        pooled = {kind: [] for kind in kinds}
        names = {}
        for _ in range(args.rounds):
            for kind in kinds:
                result = _run_worker(kind, kv, args)
                pooled[kind] += result.pop("times")
                names[kind] = labels[kind].format(**{"attn": "", "backend": "", **result})
        base = None
        rates = {}
        for kind in kinds:
            median = statistics.median(pooled[kind])
            tps = rates[kind] = tokens / median
            base = base or tps
            print(
                f"{kv:>8} {names[kind]:<28} {median * 1e3:>10.1f} {min(pooled[kind]) * 1e3:>8.1f} "
                f"{tps:>9.0f} {tps / base:>8.2f}x",
                flush=True,
            )
            if not kind.startswith("torch"):
                figures.add(
                    f"config T, kv heads {kv}, batch {BATCH} x seq {SEQ}, fwd+bwd+AdamW",
                    "training throughput",
                    "tokens/s",
                    names[kind],
                    tps,
                    peer=names["torch"],
                    peer_value=base,
                    better="higher",
                )
        if "torch-compile" in rates:
            figures.add(
                f"config T, kv heads {kv}, batch {BATCH} x seq {SEQ}, fwd+bwd+AdamW",
                "training throughput",
                "tokens/s",
                names["paddle"],
                rates["paddle"],
                peer=names["torch-compile"],
                peer_value=rates["torch-compile"],
                better="higher",
            )
        # What the runtime settings are worth: the configured step against the same step without
        # one of them, or without both (paddle imported first).
        for kind in ("paddle-mkl-default", "paddle-gomp-spin", "paddle-first"):
            if kind in rates:
                figures.add(
                    f"config T, kv heads {kv}, batch {BATCH} x seq {SEQ}, fwd+bwd+AdamW",
                    "training throughput, runtime settings",
                    "tokens/s",
                    names["paddle"],
                    rates["paddle"],
                    peer=names[kind],
                    peer_value=rates[kind],
                    better="higher",
                )


if __name__ == "__main__":
    main()

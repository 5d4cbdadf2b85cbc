"""Decode throughput: llama-infer in dygraph and through its exported static programs (Paddle's
inference engine), against transformers' generate (sdpa attention), same weights.

Config "T" of llama-model (vocab 8192, hidden 256, 4 layers, 8 heads; kv 8 and kv 2), random weights
saved once and exported in both layouts with llama-ckpt, and with `llama-infer export` (cache
capacity prompt + new tokens), by default ("static": llama-ops' fused layers when it is installed)
and with --portable (plain Paddle operators). Greedy, prompt 32, 128 new tokens (never stopping
early), batch 1 and 8. Each runs in its own subprocess with the same thread count (set explicitly:
importing Paddle sets OMP_NUM_THREADS=1), llama-infer's after the llama-infer command's
configure_runtime; the five alternate, round after round, so a load change on a shared machine hits
all. Reported: median tokens/s of a whole generation, the ratios, and the time to
first token (a generation of one token: the prompt's prefill and one pick).

The bound, measured in the same run: the decode step's weight matrix products alone (the same
shapes, chained in numpy with the same thread count: no attention, norms, cache or sampling), as
tokens/s. Each path's tokens/s over it is the fraction of the bound it reaches.

    python bench_decode.py [--threads 2] [--rounds 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from bench_figures import Figures  # the repository's figures protocol

PROMPT, NEW = 32, 128
# llama-infer on a model directory, on its default export (llama-ops' fused layers when installed),
# on a --portable export (plain Paddle operators); transformers
KINDS = ("dygraph", "static", "portable", "hf")


def child_paddle(directory: str, batch: int, repeats: int) -> dict[str, list[float]]:
    """llama-infer on a model directory (dygraph) or an export directory (static programs)."""
    import numpy as np

    from llama_model import configure_runtime

    configure_runtime(pin_threads=True)  # as the llama-infer command does, before Paddle loads
    from llama_infer import Generator

    gen = Generator(directory, threads=int(os.environ["BENCH_THREADS"]))
    prompts = np.random.default_rng(0).integers(3, 8192, (batch, PROMPT)).tolist()

    def once(new: int):
        out = gen.generate_ids(prompts, batch_size=batch, max_new_tokens=new, eos_token_ids=())
        assert all(len(c.token_ids) == new for c in out)

    return _timed(once, repeats)


def child_hf(directory: str, batch: int, repeats: int) -> dict[str, list[float]]:
    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    model = transformers.LlamaForCausalLM.from_pretrained(
        directory, torch_dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    ids = torch.tensor(np.random.default_rng(0).integers(3, 8192, (batch, PROMPT)))

    def once(new: int):
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                do_sample=False, pad_token_id=0, eos_token_id=None,
            )  # fmt: skip
        assert out.shape[1] == PROMPT + new

    return _timed(once, repeats)


def child_bound(directory: str, batch: int, repeats: int) -> dict[str, list[float]]:
    """The weight matmuls of ``NEW`` decode steps, chained in numpy (one [batch, in] x [in, out]
    product per projection and the head), timed as a generation; no first token."""
    import numpy as np

    with open(os.path.join(directory, "config.json")) as fh:
        c = json.load(fh)
    h, inter, d = (
        c["hidden_size"],
        c["intermediate_size"],
        c["hidden_size"] // c["num_attention_heads"],
    )
    kv = c["num_key_value_heads"] * d
    rng = np.random.default_rng(0)
    layer = [rng.standard_normal(s, dtype=np.float32) * 0.02 for s in
             ((h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h))]  # fmt: skip
    head = rng.standard_normal((h, c["vocab_size"]), dtype=np.float32) * 0.02
    x0 = rng.standard_normal((batch, h), dtype=np.float32)

    def once(new: int):
        for _ in range(new):
            x = x0  # chained through the products only (their scale keeps far from denormals)
            for _ in range(c["num_hidden_layers"]):
                q, _, _ = x @ layer[0], x @ layer[1], x @ layer[2]
                x = q @ layer[3]
                gate, _ = x @ layer[4], x @ layer[5]
                x = gate @ layer[6]
            _ = x @ head

    times = _timed(once, repeats)
    times["first"] = [float("nan")] * len(times["first"])
    return times


def _timed(once, repeats: int) -> dict[str, list[float]]:
    """Seconds of each of ``repeats`` whole generations (``once(NEW)``) and first tokens
    (``once(1)``), after one untimed warm-up of each."""
    times = {"total": [], "first": []}
    for key, new in (("total", NEW), ("first", 1)):
        once(new)
        for _ in range(repeats):
            t = time.perf_counter()
            once(new)
            times[key].append(time.perf_counter() - t)
    return times


def make_models(root: str) -> dict[str, dict[str, str]]:
    """Random config-T weights as a paddle-layout and an hf-layout model directory, and exported to
    static programs, by default and portable: {"kv8": {"dygraph": dir, "static": dir, "portable":
    dir, "hf": dir}, "kv2": ...}."""
    from llama_model import configure_runtime

    configure_runtime()
    import paddle

    from llama_ckpt import export
    from llama_infer import export_model
    from llama_model import LlamaForCausalLM, preset

    dirs = {}
    for kv in (8, 2):
        config = preset("bench-t", num_key_value_heads=kv, eos_token_id=None)
        model = LlamaForCausalLM(config)
        model.init_weights(kv)
        src = os.path.join(root, f"kv{kv}-src")
        os.makedirs(src)
        paddle.save(model.state_dict(), os.path.join(src, "model.pdparams"))
        config.to_json(src)
        cell = dirs[f"kv{kv}"] = {k: os.path.join(root, f"kv{kv}-{k}") for k in KINDS}
        export(os.path.join(src, "model.pdparams"), cell["dygraph"])
        export(os.path.join(src, "model.pdparams"), cell["hf"], layout="hf")
        model.eval()
        export_model(model, cell["static"], capacity=PROMPT + NEW)
        export_model(model, cell["portable"], capacity=PROMPT + NEW, portable=True)
    return dirs


def run_child(which: str, directory: str, batch: int, repeats: int, threads: int) -> dict:
    env = {**os.environ, "BENCH_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "PYTHONWARNINGS": "ignore"}  # fmt: skip
    cmd = [sys.executable, __file__, "--child", which, "--dir", directory, "--batch", str(batch),
           "--repeats", str(repeats)]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{which} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of both frameworks")
    ap.add_argument("--repeats", type=int, default=3, help="timed generations per round")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--child", choices=["paddle", "hf", "bound"])
    ap.add_argument("--dir")
    ap.add_argument("--batch", type=int)
    args = ap.parse_args()
    if args.child:
        fn = {"paddle": child_paddle, "hf": child_hf, "bound": child_bound}[args.child]
        print(json.dumps(fn(args.dir, args.batch, args.repeats)))
        return

    import statistics

    rows = []
    with tempfile.TemporaryDirectory() as root:
        dirs = make_models(root)
        from llama_infer.manifest import read_manifest

        ops = read_manifest(dirs["kv8"]["static"])["custom_ops"]
        kernels = f"llama-ops' {', '.join(ops)}" if ops else "plain Paddle operators (no llama-ops)"
        for name, cell in dirs.items():
            for batch in (int(b) for b in args.batches.split(",")):
                times = {k: {"total": [], "first": []} for k in (*KINDS, "bound")}
                for _ in range(args.rounds):
                    for kind in (*KINDS, "bound"):
                        child = {"hf": "hf", "bound": "bound"}.get(kind, "paddle")
                        where = cell["hf" if kind == "bound" else kind]
                        got = run_child(child, where, batch, args.repeats, args.threads)
                        for key in ("total", "first"):
                            times[kind][key] += got[key]
                med = {
                    k: {key: statistics.median(v) for key, v in t.items()} for k, t in times.items()
                }
                rows.append((name, batch, med))
    print(f"\nGreedy decode, config T, prompt {PROMPT}, {NEW} new tokens, {args.threads} threads, "
          f"median of {args.rounds}x{args.repeats} runs per cell; tok/s of whole generations; "
          "first token: ms to generate one token")  # fmt: skip
    print(f"static: the default export, {kernels}; portable: --portable, plain Paddle operators")
    print("| kv heads | batch | dygraph tok/s | static tok/s | portable tok/s | transformers tok/s "
          "| weight-matmul bound tok/s | dygraph/hf | static/hf | static/dygraph | best/bound | "
          "first token ms: dygraph / static / portable / hf |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    figures = Figures(__file__, vars(args))
    for name, batch, med in rows:
        tps = {k: batch * NEW / med[k]["total"] for k in (*KINDS, "bound")}
        best = max(tps["dygraph"], tps["static"])
        case = f"kv {name[2:]}, batch {batch}"
        hf = dict(peer="transformers generate (sdpa)", better="higher")
        figures.add(case, "decode", "tokens/s", "llama-infer dygraph", tps["dygraph"],
                    peer_value=tps["hf"], **hf)  # fmt: skip
        figures.add(case, "decode", "tokens/s", "llama-infer static predictor", tps["static"],
                    peer_value=tps["hf"], **hf)  # fmt: skip
        figures.add(case, "decode", "tokens/s", "llama-infer static, portable export",
                    tps["portable"], peer_value=tps["hf"], **hf)  # fmt: skip
        figures.add(case, "decode vs dygraph", "tokens/s", "llama-infer static predictor",
                    tps["static"], peer="llama-infer dygraph", peer_value=tps["dygraph"],
                    better="higher")  # fmt: skip
        for kind, label in (
            ("dygraph", "llama-infer dygraph"),
            ("static", "llama-infer static predictor"),
            ("portable", "llama-infer static, portable export"),
        ):
            figures.add(case, "time to first token", "ms", label, med[kind]["first"] * 1e3,
                        peer="transformers generate (sdpa)", peer_value=med["hf"]["first"] * 1e3,
                        better="lower")  # fmt: skip
        figures.add(case, "decode vs the weight-matmul bound", "tokens/s", "llama-infer, best path",
                    best, peer="weight matmuls alone (numpy)", peer_value=tps["bound"],
                    better="higher")  # fmt: skip
        first = " / ".join(f"{med[k]['first'] * 1e3:.1f}" for k in KINDS)
        print(f"| {name[2:]} | {batch} | {tps['dygraph']:.0f} | {tps['static']:.0f} | "
              f"{tps['portable']:.0f} | {tps['hf']:.0f} | "
              f"{tps['bound']:.0f} | {tps['dygraph'] / tps['hf']:.2f}x | {tps['static'] / tps['hf']:.2f}x | "
              f"{tps['static'] / tps['dygraph']:.2f}x | {best / tps['bound']:.2f} | {first} |")  # fmt: skip


if __name__ == "__main__":
    main()

"""Decode throughput: llama-infer against transformers' generate (sdpa attention), same weights.

Config "T" of llama-model (vocab 8192, hidden 256, 4 layers, 8 heads; kv 8 and kv 2), random weights
saved once and exported in both layouts with llama-ckpt. Greedy, prompt 32, 128 new tokens (never
stopping early), batch 1 and 8. Each framework runs in its own subprocess with the same thread count
(set explicitly: importing Paddle sets OMP_NUM_THREADS=1); the two alternate, round after round, so
a load change on a shared machine hits both. Reported: median seconds per generation, tokens/s and
the ratio.

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

PROMPT, NEW = 32, 128


def child_paddle(directory: str, batch: int, repeats: int) -> list[float]:
    import numpy as np

    from llama_infer import Generator

    gen = Generator(directory, threads=int(os.environ["BENCH_THREADS"]))
    prompts = np.random.default_rng(0).integers(3, 8192, (batch, PROMPT)).tolist()

    def once():
        out = gen.generate_ids(prompts, batch_size=batch, max_new_tokens=NEW, eos_token_ids=())
        assert all(len(c.token_ids) == NEW for c in out)

    return _timed(once, repeats)


def child_hf(directory: str, batch: int, repeats: int) -> list[float]:
    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    model = transformers.LlamaForCausalLM.from_pretrained(
        directory, torch_dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    ids = torch.tensor(np.random.default_rng(0).integers(3, 8192, (batch, PROMPT)))

    def once():
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW,
                do_sample=False, pad_token_id=0, eos_token_id=None,
            )  # fmt: skip
        assert out.shape[1] == PROMPT + NEW

    return _timed(once, repeats)


def _timed(once, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``once``, after one untimed warm-up call."""
    once()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    return times


def make_models(root: str) -> dict[str, tuple[str, str]]:
    """Random config-T weights, exported as a paddle-layout and an hf-layout model directory."""
    import paddle

    from llama_ckpt import export
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
        dirs[f"kv{kv}"] = (os.path.join(root, f"kv{kv}-paddle"), os.path.join(root, f"kv{kv}-hf"))
        export(os.path.join(src, "model.pdparams"), dirs[f"kv{kv}"][0])
        export(os.path.join(src, "model.pdparams"), dirs[f"kv{kv}"][1], layout="hf")
    return dirs


def run_child(which: str, directory: str, batch: int, repeats: int, threads: int) -> list[float]:
    env = {**os.environ, "BENCH_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}  # fmt: skip
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
    ap.add_argument("--child", choices=["paddle", "hf"])
    ap.add_argument("--dir")
    ap.add_argument("--batch", type=int)
    args = ap.parse_args()
    if args.child:
        fn = child_paddle if args.child == "paddle" else child_hf
        print(json.dumps(fn(args.dir, args.batch, args.repeats)))
        return

    import statistics

    rows = []
    with tempfile.TemporaryDirectory() as root:
        dirs = make_models(root)
        for name, (paddle_dir, hf_dir) in dirs.items():
            for batch in (int(b) for b in args.batches.split(",")):
                times = {"paddle": [], "hf": []}
                for _ in range(args.rounds):
                    times["paddle"] += run_child(
                        "paddle", paddle_dir, batch, args.repeats, args.threads
                    )
                    times["hf"] += run_child("hf", hf_dir, batch, args.repeats, args.threads)
                med = {k: statistics.median(v) for k, v in times.items()}
                rows.append((name, batch, med["paddle"], med["hf"]))
    print(f"\nGreedy decode, config T, prompt {PROMPT}, {NEW} new tokens, {args.threads} threads, "
          f"median of {args.rounds}x{args.repeats} runs per cell")  # fmt: skip
    print("| kv heads | batch | llama-infer s | tok/s | transformers s | tok/s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name, batch, ours, theirs in rows:
        print(f"| {name[2:]} | {batch} | {ours:.3f} | {batch * NEW / ours:.0f} | {theirs:.3f} | "
              f"{batch * NEW / theirs:.0f} | {theirs / ours:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()

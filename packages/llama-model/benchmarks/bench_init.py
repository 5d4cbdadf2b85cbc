"""Start 8 ranks (dp2mp2pp2) from a ~1.5 GB hf-layout model: each rank reads only its shards, vs
each rank reading the whole file and slicing it (what ``paddle.load`` + shard would do).

    python packages/llama-model/benchmarks/bench_init.py [--rounds 1] [--workdir DIR]

Both ways build the stage without memory (``paddle.LazyGuard``) and hand every parameter its local
shard the same way; they differ only in what they read. Per rank: the time from opening the weights
to a filled stage, the peak RSS (``ru_maxrss``), the RSS before loading (Paddle and the process
group) and the bytes of the rank's own parameters (its share). Medians over ranks and rounds; the
worst rank too. The file is float32 safetensors in 4 shards, read from the page cache (warm).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from bench_figures import Figures

# hidden 2048, 6 layers, vocabulary 16000: 369 M parameters, 1.48 GB in float32.
SHAPE = dict(
    hidden_size=2048, intermediate_size=5504, num_hidden_layers=6, num_attention_heads=16,
    num_key_value_heads=16, max_position_embeddings=2048, vocab_size=16000, rms_norm_eps=1e-5,
)  # fmt: skip

RANK = r"""
import json, os, resource, sys, time
import numpy as np
from llama_model import configure_runtime
configure_runtime()
from llama_model import LlamaConfig, ParallelModel, Strategy
from llama_model.parallel import init_distributed
from llama_model.pretrained import PretrainedWeights
from llama_ckpt import Canonical, open_source
from llama_ckpt.slicing import take_along
import paddle.distributed as dist

model_dir, mode, out = sys.argv[1:4]

class InMemory:
    # Every tensor of the files read whole into memory first, as paddle.load would.
    def __init__(self, source):
        self.source, self.kind = source, "safetensors"
        self.arrays = {n: source.read(n) for n in source.names()}
    def names(self): return list(self.arrays)
    def info(self, name): return self.source.info(name)
    def read(self, name): return self.arrays[name]
    def read_slice(self, name, axis, start, stop): return take_along(self.arrays[name], axis, start, stop)
    def config_dir(self): return self.source.config_dir()

strategy = Strategy.parse("dp2mp2pp2", micro_batches=2)
config = LlamaConfig.from_json(os.path.join(model_dir, "config.json"))
init_distributed(strategy)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
dist.barrier()
start = time.perf_counter()
if mode == "shards":
    weights = PretrainedWeights.open(model_dir)
else:
    weights = PretrainedWeights(model_dir, Canonical(InMemory(open_source(model_dir))), "safetensors")
pm = ParallelModel.build(config, strategy, weights=weights)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
share = sum(int(np.prod(p._local_value().shape if p.is_dist() else p.shape)) * 4 for p in pm.parameters())
dist.barrier()
with open(os.path.join(out, f"rank{dist.get_rank()}.json"), "w") as fh:
    json.dump({"seconds": seconds, "peak": peak, "before": before, "share": share}, fh)
"""


def write_model(directory: Path) -> int:
    """A float32 hf-layout model directory with random weights, written one tensor at a time."""
    import numpy as np

    from llama_ckpt import dtypes
    from llama_ckpt.safetensors_io import SafetensorsWriter
    from llama_model import LlamaConfig
    from llama_model.pretrained import expected_shapes

    config = LlamaConfig(**SHAPE)
    shapes = expected_shapes(config)
    hf = {}
    for name, shape in shapes.items():
        linear = len(shape) == 2 and name.endswith(("_proj.weight", "lm_head.weight"))
        hf_name = "model." + name[len("llama.") :] if name.startswith("llama.") else name
        hf[hf_name] = tuple(reversed(shape)) if linear else shape
    total = sum(int(np.prod(s)) * 4 for s in hf.values())
    names = list(hf)
    shards = [names[i::4] for i in range(4)]
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    weight_map = {}
    f32 = dtypes.dtype("float32")
    for i, group in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        writer = SafetensorsWriter(str(directory / file), [(n, f32, hf[n]) for n in group])
        for n in group:
            writer.write(n, rng.standard_normal(hf[n], dtype=np.float32) * np.float32(0.02))
            weight_map[n] = file
        writer.close()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    config.to_json(str(directory / "config.json"))
    return total


def run_ranks(model_dir: Path, mode: str, work: Path) -> list[dict]:
    out = work / f"{mode}-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    script = work / "rank.py"
    script.write_text(RANK)
    env = {k: v for k, v in os.environ.items() if k != "PADDLE_TRAINERS_NUM"}
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "8",
           "--log_dir", str(out / "logs"), str(script), str(model_dir), mode, str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        logs = "".join(p.read_text()[-2000:] for p in sorted((out / "logs").glob("workerlog.*")))
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-2000:]}\n{logs}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(8)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--workdir", default=None, help="Where the model is written (default: a temp dir)."
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-init-", dir=args.workdir))
    try:
        size = write_model(work / "model")
        rows: dict[str, list[dict]] = {"shards": [], "whole": []}
        for _ in range(args.rounds):
            for mode in ("whole", "shards"):  # alternated; the file stays in the page cache
                rows[mode] += run_ranks(work / "model", mode, work)
        gib = 1024**3

        def med(mode, key):
            return statistics.median(r[key] for r in rows[mode])

        def worst(mode, key):
            return max(r[key] for r in rows[mode])

        labels = {
            "shards": "llama-model: each rank reads its shards",
            "whole": "each rank reads the whole file, then slices",
        }
        print(f"\n--init-from of a {size / 1e9:.2f} GB float32 hf model, dp2mp2pp2 (8 ranks), "
              f"{args.rounds} round(s); per rank, median (worst):")  # fmt: skip
        print(
            f"{'':46s} {'time s':>14s} {'peak RSS GiB':>16s} {'RSS before GiB':>15s} {'share GiB':>10s}"
        )
        for mode in ("shards", "whole"):
            print(
                f"{labels[mode]:46s} {med(mode, 'seconds'):6.2f} ({worst(mode, 'seconds'):5.2f}) "
                f"{med(mode, 'peak') / gib:7.2f} ({worst(mode, 'peak') / gib:5.2f}) "
                f"{med(mode, 'before') / gib:15.2f} {med(mode, 'share') / gib:10.2f}"
            )
        rss_ratio = worst("shards", "peak") / worst("whole", "peak")
        above = (worst("shards", "peak") - med("shards", "before")) / (
            worst("whole", "peak") - med("whole", "before")
        )
        print(f"peak RSS, worst rank: shards / whole = {rss_ratio:.2f} (above the RSS before "
              f"loading: {above:.2f}); time, worst rank: whole / shards = "
              f"{worst('whole', 'seconds') / worst('shards', 'seconds'):.2f}x")  # fmt: skip
        figures = Figures(__file__, vars(args))
        case = f"{size / 1e9:.2f} GB hf model, dp2mp2pp2 (8 ranks), worst rank"
        for metric, unit, key, scale in (
            ("init time", "s", "seconds", 1),
            ("peak RSS", "GiB", "peak", gib),
        ):
            figures.add(case, metric, unit, labels["shards"], worst("shards", key) / scale,
                        peer=labels["whole"], peer_value=worst("whole", key) / scale, better="lower")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

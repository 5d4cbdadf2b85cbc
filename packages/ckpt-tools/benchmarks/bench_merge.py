"""Merge and export a ~1.5 GB checkpoint saved by 8 ranks; Paddle and dd measured in the same run.

    python packages/ckpt-tools/benchmarks/bench_merge.py [--repeats 3] [--workdir DIR]

Rows (medians of the repeats; peak RSS of the measuring process, from wait4):
- llama-ckpt merge -> .safetensors / .pdparams (written to disk) against
  paddle.distributed.load_merged_state_dict (into memory only) and load_merged + paddle.save;
- llama-ckpt export (one 5GB shard) plus fsync of its files, against dd of the same byte count
  with conv=fsync (the disk's raw sequential write speed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from bench_figures import Figures

HERE = Path(__file__).parent

OURS_MERGE = """
import sys, time
from llama_ckpt import merge
t = time.perf_counter(); merge(sys.argv[1], sys.argv[2]); print(time.perf_counter() - t)
"""
OURS_EXPORT = """
import os, sys, time
from llama_ckpt import export
t = time.perf_counter(); export(sys.argv[1], sys.argv[2])
for f in os.listdir(sys.argv[2]):
    fd = os.open(os.path.join(sys.argv[2], f), os.O_RDONLY); os.fsync(fd); os.close(fd)
print(time.perf_counter() - t)
"""
PADDLE_MERGE = """
import sys, time
import paddle, paddle.distributed as dist
t = time.perf_counter(); sd = dist.load_merged_state_dict(sys.argv[1], prefix="model")
if len(sys.argv) > 2: paddle.save(sd, sys.argv[2])
print(time.perf_counter() - t)
"""


def measure(code: str, *args: str) -> tuple[float, float, float]:
    """(seconds inside the call, wall seconds of the process, peak RSS in GiB) of one fresh process."""
    os.sync()  # start each run with no dirty pages from the previous one waiting for the disk
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "GLOG_minloglevel": "3"},
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = proc.stdout.read().decode().strip().splitlines()
    proc.stdout.close()
    if os.waitstatus_to_exitcode(status) != 0 or not out:
        raise SystemExit(f"benchmark process failed: {code.strip().splitlines()[1]}")
    return float(out[-1]), wall, usage.ru_maxrss / 2**20


def dd(path: Path, mib: int) -> float:
    os.sync()
    t0 = time.perf_counter()
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "conv=fsync"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=args.workdir))
    try:
        ckpt = work / "ckpt"
        print("saving the checkpoint with 8 ranks ...", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "paddle.distributed.launch",
                "--nproc_per_node",
                "8",
                "--log_dir",
                str(work / "log"),
                str(HERE / "_save_big_checkpoint.py"),
                str(ckpt),
            ],
            check=True,
            capture_output=True,
            timeout=1200,
        )
        size = sum(f.stat().st_size for f in ckpt.glob("*.distcp"))
        print(
            f"checkpoint: {size / 1e9:.2f} GB in {len(list(ckpt.glob('*.distcp')))} files",
            flush=True,
        )

        rows: dict[str, list[tuple[float, float, float]]] = {}

        def run(label, code, *a, cleanup=None):
            for _ in range(args.repeats):
                rows.setdefault(label, []).append(measure(code, *a))
                if cleanup:
                    shutil.rmtree(
                        cleanup, ignore_errors=True
                    ) if cleanup.is_dir() else cleanup.unlink(missing_ok=True)

        run(
            "llama-ckpt merge -> .safetensors",
            OURS_MERGE,
            ckpt,
            work / "m.safetensors",
            cleanup=work / "m.safetensors",
        )
        run(
            "llama-ckpt merge -> .pdparams",
            OURS_MERGE,
            ckpt,
            work / "m.pdparams",
            cleanup=work / "m.pdparams",
        )
        run("paddle load_merged_state_dict (memory only)", PADDLE_MERGE, ckpt)
        run(
            "paddle load_merged + paddle.save",
            PADDLE_MERGE,
            ckpt,
            work / "p.pdparams",
            cleanup=work / "p.pdparams",
        )
        (ckpt / "config.json").write_text("{}")
        run("llama-ckpt export + fsync", OURS_EXPORT, ckpt, work / "exp", cleanup=work / "exp")
        dd_times = []
        for _ in range(args.repeats):
            dd_times.append(dd(work / "dd.bin", size // 2**20))
            (work / "dd.bin").unlink()

        def med(label, i):
            return statistics.median(r[i] for r in rows[label])

        peer = "paddle load_merged_state_dict (memory only)"
        print(f"\nmerge of {size / 1e9:.2f} GB (8 ranks, dp2mp2pp2), medians of {args.repeats}:")
        print(
            f"{'':46s} {'call s':>8s} {'wall s':>8s} {'peak RSS GiB':>13s} {'speed-up':>9s} {'RSS ratio':>10s}"
        )
        figures = Figures(__file__, vars(args))
        case = f"{size / 1e9:.2f} GB checkpoint from 8 ranks (dp2mp2pp2)"
        for label in rows:
            if "export" in label:
                continue
            print(
                f"{label:46s} {med(label, 0):8.2f} {med(label, 1):8.2f} {med(label, 2):13.2f} "
                f"{med(peer, 0) / med(label, 0):8.2f}x {med(label, 2) / med(peer, 2):10.2f}"
            )
            for metric, unit, i in (("merge time", "s", 0), ("peak RSS", "GiB", 2)):
                if label.startswith("llama-ckpt"):
                    figures.add(case, metric, unit, label, med(label, i), peer=peer,
                                peer_value=med(peer, i), better="lower")  # fmt: skip
        t_exp, t_dd = med("llama-ckpt export + fsync", 0), statistics.median(dd_times)
        print(
            f"\nexport of {size / 1e9:.2f} GB (one shard, fsync'd) vs dd conv=fsync of the same bytes:"
        )
        print(
            f"{'llama-ckpt export + fsync':46s} {t_exp:8.2f} s {size / t_exp / 1e6:8.0f} MB/s "
            f"peak RSS {med('llama-ckpt export + fsync', 2):.2f} GiB"
        )
        print(
            f"{'dd if=/dev/zero bs=1M conv=fsync':46s} {t_dd:8.2f} s {size / t_dd / 1e6:8.0f} MB/s"
        )
        print(f"{'ratio (export / dd throughput)':46s} {t_dd / t_exp:8.2f}")
        figures.add(
            f"export of the {size / 1e9:.2f} GB checkpoint, one shard, fsync'd",
            "write speed",
            "MB/s",
            "llama-ckpt export + fsync",
            size / t_exp / 1e6,
            peer="dd if=/dev/zero bs=1M conv=fsync",
            peer_value=size / t_dd / 1e6,
            better="higher",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

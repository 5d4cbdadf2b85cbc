"""`llama-ckpt inspect`: what a checkpoint holds and, for a distributed one, who holds what."""

from __future__ import annotations

import os
from collections import defaultdict

from .distcp import DistCheckpoint
from .sources import open_source


def describe(path: str, prefix: str | None = None, unique_id: int | None = None) -> dict:
    src = open_source(path, prefix=prefix, unique_id=unique_id)
    tensors = []
    info: dict = {"path": path, "kind": getattr(src, "kind", "distcp")}
    if isinstance(src, DistCheckpoint):
        info.update(unique_id=src.unique_id, unique_ids=src.unique_ids, prefix=src.prefix)
        groups = defaultdict(int)
        for key in src.all_keys:
            if src.name_of(key) is None:
                groups[key.split(".", 1)[0]] += 1
        info["other_key_groups"] = dict(groups)
        per_rank: dict[int, dict] = defaultdict(lambda: {"tensors": 0, "bytes": 0, "file": None})
        for name, t in src.tensors.items():
            boxes = {(p.offset, p.shape) for p in t.pieces}
            grid = [len({off[d] for off, _ in boxes}) for d in range(len(t.shape))]
            ranks = sorted({p.rank for p in t.pieces})
            for p in t.pieces:
                n = (p.flat_range[1] - p.flat_range[0]) if p.flat_range else _prod(p.shape)
                per_rank[p.rank]["tensors"] += 1
                per_rank[p.rank]["bytes"] += n * t.dtype.itemsize
                per_rank[p.rank]["file"] = p.file
            tensors.append(
                {
                    "name": name,
                    "dtype": t.dtype.name,
                    "shape": list(t.shape),
                    "bytes": t.nbytes,
                    "pieces": len(t.pieces),
                    "grid": grid,
                    "flattened": any(p.flat_range for p in t.pieces),
                    "ranks": ranks,
                }
            )
        info["ranks"] = {r: per_rank[r] for r in sorted(per_rank)}
    else:
        for name in src.names():
            dt, shape = src.info(name)
            tensors.append(
                {
                    "name": name,
                    "dtype": dt.name,
                    "shape": list(shape),
                    "bytes": _prod(shape) * dt.itemsize,
                }
            )
        if hasattr(src, "files"):
            info["files"] = [os.path.basename(f) for f in src.files]
    info["tensors"] = tensors
    info["total_bytes"] = sum(t["bytes"] for t in tensors)
    return info


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def format_text(info: dict) -> str:
    lines = [f"{info['path']}: {info['kind']}"]
    if info["kind"] == "distcp":
        lines.append(
            f"unique id {info['unique_id']} (available: {', '.join(map(str, info['unique_ids']))})"
            f"; prefix {info['prefix'] + '.' if info['prefix'] else '(none)'}"
        )
        for group, n in info["other_key_groups"].items():
            lines.append(f"not shown: {n} keys under {group}. (--prefix {group})")
    rows = [("name", "dtype", "shape", "bytes", "layout")]
    for t in info["tensors"]:
        layout = ""
        if "grid" in t:
            split = "x".join(map(str, t["grid"])) or "scalar"
            copies = t["pieces"] // max(1, _prod(t["grid"])) if not t["flattened"] else 1
            layout = (
                f"split {split}"
                + (f", {copies} copies" if copies > 1 else "")
                + (", flattened" if t["flattened"] else "")
                + f", ranks {_ranges(t['ranks'])}"
            )
        rows.append(
            (t["name"], t["dtype"], str(tuple(t["shape"])), human_bytes(t["bytes"]), layout)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4])
    if "ranks" in info:
        lines.append("per rank:")
        for rank, v in info["ranks"].items():
            lines.append(
                f"  rank {rank}: {v['tensors']} pieces, {human_bytes(v['bytes'])} in {v['file']}"
            )
    lines.append(f"{len(info['tensors'])} tensors, {human_bytes(info['total_bytes'])}")
    return "\n".join(lines)


def _ranges(ranks: list[int]) -> str:
    out, start = [], None
    for i, r in enumerate(ranks):
        if start is None:
            start = r
        if i + 1 == len(ranks) or ranks[i + 1] != r + 1:
            out.append(str(start) if start == r else f"{start}-{r}")
            start = None
    return ",".join(out)

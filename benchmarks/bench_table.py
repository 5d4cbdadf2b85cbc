"""One table of every benchmark figure: reads the JSON Lines records of ``bench_figures`` and writes
``OUT/benchmarks.md`` and ``OUT/benchmarks.json``.

    python benchmarks/bench_table.py bench-results/raw/*.jsonl --out bench-results
    python benchmarks/bench_table.py benchmarks/results/RUN.jsonl --insert README.md:RUN

``nox -s bench`` runs it after the benchmarks. Rows keep the order of the records; each shows our
figure, the peer's figure from the same run and the ratio (above 1: ours is ahead; see
``bench_figures``). The machine each figure was measured on heads the table; figures from more than
one machine get a machine column.

``--insert FILE:NAME`` writes the same table (without its heading) into FILE, replacing what lies
between the lines ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``: a README's table of a run
is then generated from that run's records (kept in ``benchmarks/results/``), never copied by hand.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

from bench_figures import machine as this_machine

REQUIRED = ("package", "benchmark", "case", "metric", "unit", "label", "value", "peer",
            "peer_value", "better", "ratio")  # fmt: skip


def read_records(paths: list[Path]) -> list[dict]:
    records = []
    for path in paths:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"Error: {path}:{number}: not JSON ({exc.msg})") from None
            missing = [k for k in REQUIRED if k not in record]
            if missing:
                raise SystemExit(f"Error: {path}:{number}: missing {', '.join(missing)}")
            records.append(record)
    return records


def describe(m: dict) -> str:
    """One line: CPU, its features, cores, memory, OS and Python."""
    cpu = m.get("cpu") or "unknown CPU"
    if m.get("cpu_family"):
        cpu += f" (family {m['cpu_family']}, model {m.get('cpu_model')})"
    parts = [cpu]
    if m.get("isa"):
        parts.append(m["isa"].upper().replace("AVX512F", "AVX-512"))
    cpus = f"{m.get('logical_cpus')} logical CPUs"
    if m.get("cores_per_socket"):
        cpus += f" ({m['cores_per_socket']} cores per socket)"
    if m.get("usable_cpus") not in (None, m.get("logical_cpus")):
        cpus += f", {m['usable_cpus']} usable"
    parts.append(cpus)
    if m.get("memory_gib"):
        parts.append(f"{m['memory_gib']} GiB")
    if m.get("virtualised"):
        parts.append("virtual machine")
    parts += [m.get("os", ""), f"Python {m.get('python')}"]
    return ", ".join(p for p in parts if p)


def versions(soft: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in soft.items())


def number(v: float | None) -> str:
    if v is None:
        return "—"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def build(records: list[dict]) -> tuple[str, dict]:
    fallback = None
    machines: list[dict] = []
    figures = []
    for record in records:
        m = record.get("machine")
        if m is None:
            m = fallback = fallback or this_machine()
        if m not in machines:
            machines.append(m)
        figures.append({**record, "machine": machines.index(m)})
    times = sorted(r["time"] for r in records if r.get("time"))
    loads = [r["loadavg"] for r in records if r.get("loadavg") is not None]

    lines = ["# Benchmarks", ""]
    if len(machines) == 1:
        lines.append(f"Machine: {describe(machines[0])}.")
    else:
        lines += [f"Machine {i + 1}: {describe(m)}." for i, m in enumerate(machines)]
    seen: dict[str, list[str]] = {}
    for f in figures:
        for dist, version in (f.get("software") or {}).items():
            if version not in seen.setdefault(dist, []):
                seen[dist].append(version)
    if seen:
        lines.append(
            "Software: " + ", ".join(f"{d} {' / '.join(v)}" for d, v in seen.items()) + "."
        )
    if times:
        first, last = times[0][:10], times[-1][:10]
        when = first if first == last else f"{first} to {last}"
        load = (
            f"{min(loads)}"
            if loads and min(loads) == max(loads)
            else f"{min(loads, default=0)}–{max(loads, default=0)}"
        )
        lines.append(f"Measured {when}" + (f"; 1-minute load average {load} while recording." if loads else "."))  # fmt: skip
    lines += [
        "",
        "Each figure is the script's median; the peer is measured in the same run; the last column is",
        "how many times better ours is (above 1: ours ahead, whichever direction the metric improves).",
        "",
    ]
    many = len(machines) > 1
    head = ["benchmark", "case", "metric (unit, better)", "ours", "value", "peer", "peer value", "ours vs peer"]  # fmt: skip
    head += ["machine"] if many else []
    numeric = ("value", "peer value", "ours vs peer")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---:" if h in numeric else "---" for h in head) + "|")
    for f in figures:
        arrow = "↑" if f["better"] == "higher" else "↓"
        ratio = "—" if f["ratio"] is None else f"{f['ratio']:.2f}x"
        row = [f"{f['package']}/{f['benchmark']}", f["case"], f"{f['metric']} ({f['unit']}, {arrow})",
               f["label"], number(f["value"]), f["peer"] or "—", number(f["peer_value"]), ratio]  # fmt: skip
        row += [str(f["machine"] + 1)] if many else []
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    # Every distinct set of options a script ran with (records of several runs may be gathered).
    runs: dict[tuple[str, str, str], dict] = {}
    for f in figures:
        opts = f.get("settings") or {}
        key = (f["package"], f["benchmark"], json.dumps(opts, sort_keys=True))
        runs.setdefault(key, {"opts": opts, "software": f.get("software") or {}})
    lines += ["", "Options and software of each run:", ""]
    for (package, benchmark, _), run in runs.items():
        opts = run["opts"]
        shown = ", ".join(f"{k}={v}" for k, v in opts.items() if v is not None and v is not False)
        extra = f"; {versions(run['software'])}" if run["software"] else ""
        lines.append(
            f"- `packages/{package}/benchmarks/{benchmark}.py`: {shown or 'defaults'}{extra}"
        )
    generated = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    table = {"generated": generated, "machines": machines, "figures": figures}
    return "\n".join(lines) + "\n", table


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def insert(path: Path, name: str, markdown: str) -> None:
    """Replace the lines between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in ``path``."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    lines = path.read_text(encoding="utf-8").split("\n")
    try:
        first, last = lines.index(begin), lines.index(end)
    except ValueError:
        raise SystemExit(f"Error: {path}: no lines {begin} ... {end}") from None
    if last < first:
        raise SystemExit(f"Error: {path}: {end} comes before {begin}")
    body = markdown.split("\n", 2)[2].strip("\n")  # without "# Benchmarks" and its blank line
    write_atomic(path, "\n".join([*lines[: first + 1], body, *lines[last:]]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", nargs="+", type=Path, help="JSON Lines files of figures")
    ap.add_argument("--out", type=Path, help="folder for benchmarks.md/.json (default: bench-results, "
                    "unless --insert is given)")  # fmt: skip
    ap.add_argument("--insert", action="append", default=[], metavar="FILE:NAME",
                    help="write the table into FILE between <!-- bench:NAME --> and "
                    "<!-- /bench:NAME -->")  # fmt: skip
    args = ap.parse_args(argv)
    records = read_records([p for p in args.records if p.exists()])
    if not records:
        print("Error: no benchmark figures recorded", file=sys.stderr)
        return 2
    markdown, table = build(records)
    for target in args.insert:
        path, _, name = target.rpartition(":")
        if not path or not name:
            print(f"Error: --insert takes FILE:NAME, not {target!r}", file=sys.stderr)
            return 2
        insert(Path(path), name, markdown)
        print(f"written: the table {name!r} of {path}")
    out = args.out or (None if args.insert else Path("bench-results"))
    if out is None:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "benchmarks.md", markdown)
    write_atomic(out / "benchmarks.json", json.dumps(table, indent=2) + "\n")
    print(markdown)
    print(f"written: {out / 'benchmarks.md'}, {out / 'benchmarks.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The figures protocol of the benchmarks, and the description of the machine they ran on.

Every ``packages/*/benchmarks/bench_*.py`` prints its own table and, when the environment variable
``BENCH_JSON`` names a file, also appends to that file one JSON object per figure, one per line
(JSON Lines; the file is opened in append mode, so several scripts and processes can share it).
``nox -s bench`` sets the variable and builds one table from the records (``bench_table.py``).
Without the variable a benchmark behaves exactly as before: nothing is written.

A record has these fields:

============  =====================================================================================
package       the package's directory under ``packages/`` (``"llama-data"``, ``"ckpt-tools"``, ...)
benchmark     the script's file stem (``"bench_reads"``)
case          what was measured: the row of the script's table, with its size
              (``"single dataset, seq 2048"``, ``"kv 8, batch 1"``)
metric        the quantity (``"random reads"``, ``"step time"``, ``"merge time"``)
unit          its unit (``"samples/s"``, ``"ms"``, ``"s"``, ``"MB/s"``, ``"GiB"``, ``"tokens/s"``)
label         what produced ``value`` (``"llama-data GPTDataset"``)
value         our figure, a number (the median the script prints)
peer          what it is compared with, measured in the same run (``"upstream read path"``), or
              null for a figure without a peer
peer_value    the peer's figure in the same unit, or null
better        ``"higher"`` or ``"lower"``: which direction of ``metric`` is better
ratio         how many times better ours is than the peer: ``value / peer_value`` when higher is
              better, ``peer_value / value`` when lower is better (so above 1 means ours is ahead,
              whatever the metric); null without a peer
settings      the script's options as run (``vars(args)``), so quick runs are recognisable
machine       ``machine()`` below: CPU model and features, cores, memory, OS, Python version
software      ``software()`` below: versions of paddlepaddle(-gpu), torch, transformers, numpy
loadavg       the 1-minute load average when the figure was recorded (a busy machine shows here)
time          when the figure was recorded, ISO 8601 UTC
============  =====================================================================================

A script uses it in two lines, and runs standalone all the same (the benchmarks are not shipped
with the packages, so the repository layout is always there)::

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
    from bench_figures import Figures

    figures = Figures(__file__, vars(args))
    figures.add("single dataset, seq 2048", "random reads", "samples/s", "llama-data GPTDataset",
                ours, peer="upstream read path", peer_value=theirs, better="higher")

A script that cannot import this module writes the same objects itself; only ``package``,
``benchmark``, ``case``, ``metric``, ``unit``, ``label``, ``value``, ``peer``, ``peer_value``,
``better`` and ``ratio`` are required (``bench_table.py`` fills a missing ``machine`` with the
machine that builds the table).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

ENV = "BENCH_JSON"
# Distributions whose versions say what a figure was measured with (absent ones are left out).
VERSIONS = ("paddlepaddle", "paddlepaddle-gpu", "torch", "transformers", "numpy")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (Linux), else empty."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine() -> dict:
    """The hardware and OS a figure was measured on (what stays the same across benchmarks)."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    isa = next((f for f in ("avx512f", "avx2", "avx") if f in flags), None)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    cores = info.get("cpu cores")
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_family": info.get("cpu family"),
        "cpu_model": info.get("model"),
        "isa": isa,
        "virtualised": "hypervisor" in flags,
        "cores_per_socket": int(cores) if cores and cores.isdigit() else None,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def software() -> dict[str, str]:
    """Versions of the frameworks and numpy in the running environment; no framework is imported."""
    versions = {}
    for dist in VERSIONS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions


def ratio(value: float, peer_value: float | None, better: str) -> float | None:
    """How many times better ``value`` is than ``peer_value`` (above 1: ours is ahead)."""
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower', not {better!r}")
    if peer_value is None:
        return None
    num, den = (value, peer_value) if better == "higher" else (peer_value, value)
    return num / den if den else math.inf


class Figures:
    """Appends one benchmark's figures to the file named by ``BENCH_JSON``, if it is set."""

    def __init__(self, script: str, settings: dict | None = None):
        path = Path(script).resolve()
        self.package = path.parents[1].name
        self.benchmark = path.stem
        self.settings = {k: v for k, v in (settings or {}).items() if _is_json(v)}
        self.path = os.environ.get(ENV) or None
        self._machine: dict | None = None

    def add(
        self,
        case: str,
        metric: str,
        unit: str,
        label: str,
        value: float,
        *,
        peer: str | None = None,
        peer_value: float | None = None,
        better: str,
    ) -> dict:
        record = {
            "package": self.package,
            "benchmark": self.benchmark,
            "case": case,
            "metric": metric,
            "unit": unit,
            "label": label,
            "value": float(value),
            "peer": peer,
            "peer_value": None if peer_value is None else float(peer_value),
            "better": better,
            "ratio": ratio(float(value), peer_value, better),
            "settings": self.settings,
        }
        if self.path:
            self._machine = self._machine or machine()
            record |= {
                "machine": self._machine,
                "software": software(),
                "loadavg": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            # One write per record in append mode: lines from several processes never interleave.
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")
        return record


def _is_json(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


if __name__ == "__main__":
    json.dump({"machine": machine(), "software": software()}, sys.stdout, indent=2)
    print()

"""How many CPU threads decoding uses by default: one per physical core this process may run on.

A decode step is a chain of small matrix products; a second hyper-thread on a core shares that
core's vector units and only adds synchronisation to every parallel region, so logical CPUs (what
``os.cpu_count()`` counts) are the wrong default. The cores are read from Linux's sysfs topology
(``physical_package_id``, ``core_id`` of each CPU in the affinity mask); elsewhere, or when sysfs
says nothing, every CPU the process may use counts.
"""

from __future__ import annotations

import os

SYSFS_CPUS = "/sys/devices/system/cpu"


def usable_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def physical_cores(cpus: list[int] | None = None, sysfs: str = SYSFS_CPUS) -> int:
    """The number of distinct physical cores among ``cpus`` (default: this process's)."""
    cpus = usable_cpus() if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        topology = os.path.join(sysfs, f"cpu{cpu}", "topology")
        try:
            with open(os.path.join(topology, "physical_package_id")) as fh:
                package = fh.read().strip()
            with open(os.path.join(topology, "core_id")) as fh:
                core = fh.read().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((package, core))
    return max(1, len(cores))

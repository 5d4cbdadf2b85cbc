"""The devices a plan can be made for: memory, dense peaks and the links between them.

Peaks are the MFU table's (``metrics.GPU_PEAK_TFLOPS``, one table for both), looked up by the
device's name. Memory is what ``nvidia-smi`` reports as the total of one device (MiB), of which
the CUDA context and the caching allocator take their share (the plan's reserve, not this table).

Bandwidths are per device and per direction, in GB/s (10^9 bytes), the nominal link rate:

* intra-node: NVLink where the part has it, else PCIe. NVIDIA's datasheets give NVLink as the
  bidirectional total per GPU (H100/H200/H20 SXM 900 GB/s, A100 600 GB/s, V100 SXM2 300 GB/s);
  one direction is half. L40S has no NVLink: PCIe Gen4 x16, 32 GB/s per direction.
* inter-node: one InfiniBand NIC per GPU, as NVIDIA's reference nodes are built: NDR 400 Gb/s
  (50 GB/s) beside Hopper (DGX H100/H200), HDR 200 Gb/s (25 GB/s) beside A100 (DGX A100), EDR
  100 Gb/s (12.5 GB/s) beside V100 (DGX-1/2); L40S servers typically ship 100 GbE or less
  (12.5 GB/s). ``--inter-node-bandwidth`` overrides it for a cluster built otherwise.
* ``cpu``: this machine's processes talk through loopback TCP (gloo): 10 GB/s is a generous
  bound; across machines, 10 GbE (1.25 GB/s).
* another GPU (``--device NAME --device-memory GiB``): PCIe Gen4 and 100 Gb/s unless given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from llama_train.errors import TrainError
from llama_train.metrics import peak_tflops_of

MIB = 1024**2
GIB = 1024**3


# A GPU the table does not know: PCIe Gen4 x16 within a node, 100 Gb/s between nodes, unless given
PCIE_GBPS, ETHERNET_GBPS = 32.0, 12.5


@dataclass(frozen=True)
class Device:
    name: str
    memory_bytes: int
    intra_node_gbps: float = PCIE_GBPS  # GB/s per device and direction
    inter_node_gbps: float = ETHERNET_GBPS
    per_node: int = 8  # devices per node
    gpu: bool = True

    def peak_flops(self, compute_dtype: str, given_tflops: float | None = None) -> float | None:
        """Dense FLOP/s in ``compute_dtype``: ``given_tflops`` (--peak-tflops), else the MFU
        table's; None for a CPU without --peak-tflops."""
        if given_tflops is not None:
            return given_tflops * 1e12
        if not self.gpu:
            return None
        peak = peak_tflops_of(self.name, compute_dtype)
        return None if peak is None else peak * 1e12


# name -> (memory MiB as nvidia-smi reports it, intra-node GB/s, inter-node GB/s)
DEVICES: dict[str, tuple[int, float, float]] = {
    "H100-80GB": (81559, 450.0, 50.0),
    "H200": (143771, 450.0, 50.0),
    "A100-80GB": (81920, 300.0, 25.0),
    "A100-40GB": (40960, 300.0, 25.0),
    "H20": (97871, 450.0, 50.0),
    "V100-32GB": (32768, 150.0, 12.5),
    "L40S": (46068, 32.0, 12.5),
}
CPU = "cpu"
NAMES = (*DEVICES, CPU)


def host_memory_bytes() -> int:
    """This machine's memory (``MemTotal``), the budget of a ``cpu`` plan's ranks together."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device(
    name: str,
    memory_gib: float | None = None,
    intra_node_gbps: float | None = None,
    inter_node_gbps: float | None = None,
    per_node: int | None = None,
) -> Device:
    """The named device (case-insensitive), with any of its figures overridden. ``cpu``: every
    rank on this machine, sharing its memory. An unknown name needs ``memory_gib``."""
    for label, value in (("--device-memory", memory_gib), ("--intra-node-bandwidth",
                         intra_node_gbps), ("--inter-node-bandwidth", inter_node_gbps),
                         ("--gpus-per-node", per_node)):  # fmt: skip
        if value is not None and not value > 0:
            raise TrainError(f"{label} must be > 0, got {value:g}")
    known = {n.lower(): n for n in NAMES}
    canonical = known.get(name.lower())
    if canonical == CPU:
        base = Device(CPU, host_memory_bytes(), 10.0, 1.25, per_node=os.cpu_count() or 1, gpu=False)
    elif canonical is not None:
        mib, intra, inter = DEVICES[canonical]
        base = Device(canonical, mib * MIB, intra, inter)
    elif memory_gib is not None:  # a GPU the table does not know: its memory is given
        base = Device(name, 0)
    else:
        raise TrainError(
            f"--device {name!r} is not known (known: {', '.join(NAMES)}); for another GPU give "
            "--device-memory GiB (and --peak-tflops, --intra-node-bandwidth, --inter-node-bandwidth)"
        )
    changes = {
        "memory_bytes": None if memory_gib is None else int(memory_gib * GIB),
        "intra_node_gbps": intra_node_gbps,
        "inter_node_gbps": inter_node_gbps,
        "per_node": per_node,
    }
    return replace(base, **{k: v for k, v in changes.items() if v is not None})


def describe() -> list[str]:
    """One line per known device, for ``--device list``."""
    lines = []
    for name, (mib, intra, inter) in DEVICES.items():
        peaks = [
            f"{dtype} {peak:g}" if (peak := peak_tflops_of(name, dtype)) else f"no {dtype}"
            for dtype in ("bfloat16", "float32")
        ]
        lines.append(
            f"{name}: {mib * MIB / GIB:.1f} GiB, dense TFLOP/s {', '.join(peaks)}, "
            f"{intra:g} GB/s intra-node, {inter:g} GB/s inter-node"
        )
    lines.append(
        f"{CPU}: this machine ({host_memory_bytes() / GIB:.1f} GiB shared by the ranks; peak from "
        "--peak-tflops)"
    )
    return lines

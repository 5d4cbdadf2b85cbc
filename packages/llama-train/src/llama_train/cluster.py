"""Where the job's nodes come from: the launch options, or the cluster scheduler that started it.

Three sources, in this order:

* the options (``--nnodes``, ``--master``, ``--node-rank``, ``--nproc-per-node``): given
  ``--nnodes``, the cluster's variables are not read at all;
* Slurm (``SLURM_JOB_ID`` set): the nodes from ``SLURM_NNODES``, this node from ``SLURM_NODEID``,
  the master the first host of ``SLURM_JOB_NODELIST`` (Slurm's hostlist form, ``gpu[001-004,010]``)
  on ``--master-port`` or a port derived from the job id, the processes per node the GPUs Slurm
  gives the node (``SLURM_GPUS_ON_NODE``, else the ids in ``SLURM_STEP_GPUS`` /
  ``SLURM_JOB_GPUS``, else the count in ``SLURM_GPUS_PER_NODE``), or the strategy's share of the
  nodes where it gives none;
* Kubernetes, Kubeflow's PaddleJob (``PADDLE_MASTER`` and ``PADDLE_NNODES`` set): the master and
  the nodes from those, this node from ``PADDLE_RANK`` or the index its pod name ends with
  (``job-worker-3`` is node 3, the PaddleJob's master being worker 0).

The front process resolves the topology once (``run_record.resolve``), checks it against the
strategy, records it in ``run_config.json`` (``resolved.topology``) and says where it came from at
start-up.
"""

from __future__ import annotations

import os
import re
import socket
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from llama_train.errors import TrainError

# A port derived from the job id lies in [PORT_BASE, PORT_BASE + PORT_SPAN): below Linux's
# ephemeral range (32768-60999), so that no outgoing connection holds it.
PORT_BASE = 20000
PORT_SPAN = 10000


@dataclass(frozen=True)
class Topology:
    nnodes: int
    node_rank: int
    master: str | None  # IP:PORT of the rendezvous; None on one node
    nproc_per_node: int
    source: str  # "options", "slurm" or "kubernetes"
    detail: str = ""  # which variables said so, for the start-up line

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Topology:
        return cls(**data)

    def describe(self) -> str:
        nodes = f"{self.nnodes} node(s) × {self.nproc_per_node} process(es)"
        if self.nnodes > 1:
            nodes += f", this node {self.node_rank}, master {self.master}"
        origin = {"options": "the launch options", "slurm": "Slurm",
                  "kubernetes": "Kubernetes (PaddleJob)"}[self.source]  # fmt: skip
        return f"topology: {nodes} (from {origin}{': ' + self.detail if self.detail else ''})"


def resolve_topology(launch, world_size: int, environ: Mapping[str, str] | None = None) -> Topology:
    """The job's topology from the ``Launch`` options and the environment; raises TrainError with
    one line when it cannot hold the strategy's ``world_size`` processes."""
    env = os.environ if environ is None else environ
    if launch.nnodes is None and env.get("SLURM_JOB_ID"):
        topology = _from_slurm(launch, world_size, env)
    elif launch.nnodes is None and env.get("PADDLE_MASTER") and env.get("PADDLE_NNODES"):
        topology = _from_kubernetes(launch, world_size, env)
    else:
        topology = _from_options(launch, world_size)
    total = topology.nproc_per_node * topology.nnodes
    if total != world_size:
        where = "" if topology.source == "options" else f" ({topology.detail})"
        raise TrainError(
            f"the strategy needs {world_size} processes but the topology has "
            f"{topology.nnodes} node(s) × {topology.nproc_per_node} = {total}{where}"
        )
    if not 0 <= topology.node_rank < topology.nnodes:
        raise TrainError(f"node rank {topology.node_rank} is not below the {topology.nnodes} nodes")
    return topology


def _from_options(launch, world_size: int) -> Topology:
    nnodes = launch.nnodes or 1
    if nnodes > 1 and launch.master is None:
        raise TrainError(f"--nnodes {nnodes} needs --master IP:PORT (the rendezvous of the nodes)")
    per_node = launch.nproc_per_node or max(1, world_size // nnodes)
    return Topology(nnodes, launch.node_rank or 0, launch.master, per_node, "options")


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except (KeyError, ValueError):
        raise TrainError(f"{name} must be set to an integer, got {env.get(name)!r}") from None


def _from_slurm(launch, world_size: int, env: Mapping[str, str]) -> Topology:
    job = env["SLURM_JOB_ID"]
    nnodes = _int(env, "SLURM_NNODES" if "SLURM_NNODES" in env else "SLURM_JOB_NUM_NODES")
    node_rank = _int(env, "SLURM_NODEID") if nnodes > 1 else 0
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    detail = f"job {job}, SLURM_NNODES={nnodes}, SLURM_NODEID={node_rank}"
    master = None
    if nnodes > 1:
        hosts = parse_hostlist(nodelist)
        if not hosts:
            raise TrainError("SLURM_JOB_NODELIST is empty: cannot tell the master node")
        port = launch.master_port or derived_port(job)
        master = f"{_address(hosts[0])}:{port}"
        detail += f", master {hosts[0]} (first of SLURM_JOB_NODELIST)"
    gpus = slurm_gpus_on_node(env)
    per_node = launch.nproc_per_node or gpus or max(1, world_size // nnodes)
    if gpus and not launch.nproc_per_node:
        detail += f", {gpus} GPU(s) per node"
    return Topology(nnodes, node_rank, master, per_node, "slurm", detail)


def _from_kubernetes(launch, world_size: int, env: Mapping[str, str]) -> Topology:
    nnodes = _int(env, "PADDLE_NNODES")
    master = env["PADDLE_MASTER"]
    host, _, port = master.rpartition(":")
    if not host or not port.isdigit():
        raise TrainError(f"PADDLE_MASTER must be HOST:PORT, got {master!r}")
    if "PADDLE_RANK" in env:
        node_rank, how = _int(env, "PADDLE_RANK"), "PADDLE_RANK"
    else:
        found = re.search(r"-(\d+)$", socket.gethostname())
        if found is None:
            raise TrainError(
                "PADDLE_MASTER is set but not PADDLE_RANK, and the host name does not end with "
                "the pod's index: set PADDLE_RANK, or --nnodes, --node-rank and --master"
            )
        node_rank, how = int(found.group(1)), "the pod name"
    detail = f"PADDLE_NNODES={nnodes}, PADDLE_MASTER={master}, node {node_rank} from {how}"
    per_node = launch.nproc_per_node or max(1, world_size // nnodes)
    return Topology(nnodes, node_rank, f"{_address(host)}:{port}", per_node, "kubernetes", detail)


def _address(host: str) -> str:
    """The IP of ``host``: Paddle's launcher starts the rendezvous only where the master's address
    is the node's own IP (or 127.0.0.1), so a host name is resolved here."""
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        raise TrainError(f"cannot resolve the master host {host!r}: {exc}") from None


def derived_port(job_id: str) -> int:
    """A rendezvous port of a Slurm job, the same on every node of it."""
    number = int(job_id) if job_id.isdigit() else zlib.crc32(job_id.encode())
    return PORT_BASE + number % PORT_SPAN


def slurm_gpus_on_node(env: Mapping[str, str]) -> int | None:
    """The GPUs Slurm gives this node, or None where it gives none."""
    if env.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return int(env["SLURM_GPUS_ON_NODE"]) or None
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        ids = [i for i in env.get(name, "").split(",") if i.strip()]
        if ids:
            return len(ids)
    # "4", "a100:4", "gpu:a100:4", and per type "a100:2,v100:2" (summed)
    spec = env.get("SLURM_GPUS_PER_NODE", "")
    counts = [part.rsplit(":", 1)[-1] for part in spec.split(",") if part]
    counts = [c.split("(")[0] for c in counts]
    if counts and all(c.isdigit() for c in counts):
        return sum(int(c) for c in counts) or None
    return None


# ------------------------------------------------------------------------------------ hostlists
def parse_hostlist(text: str) -> list[str]:
    """Slurm's compressed host list, expanded in order: ``gpu[001-003,010]`` -> gpu001, gpu002,
    gpu003, gpu010 (zero padding kept); ``a-[1-2]-b,c`` -> a-1-b, a-2-b, c; several bracket groups
    in one name multiply (``r[1-2]n[1-2]``: r1n1, r1n2, r2n1, r2n2). Raises TrainError on a
    malformed list."""
    hosts: list[str] = []
    for name in _split_top_level(text.strip()):
        hosts.extend(_expand(name, text))
    return hosts


def _split_top_level(text: str) -> list[str]:
    """Split on the commas outside brackets."""
    names, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            names.append(text[start:i])
            start = i + 1
        if depth not in (0, 1):
            raise TrainError(f"malformed Slurm host list {text!r}")
    if depth != 0:
        raise TrainError(f"malformed Slurm host list {text!r}")
    names.append(text[start:])
    return [n for n in names if n]


def _expand(name: str, whole: str) -> list[str]:
    found = re.search(r"\[([^\]]*)\]", name)
    if found is None:
        return [name]
    head, tail = name[: found.start()], name[found.end() :]
    out = []
    for item in found.group(1).split(","):
        first, sep, last = item.partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise TrainError(f"malformed Slurm host list {whole!r}")
        width = len(first)
        for number in range(int(first), int(last if sep else first) + 1):
            out.extend(_expand(f"{head}{number:0{width}d}{tail}", whole))
    return out

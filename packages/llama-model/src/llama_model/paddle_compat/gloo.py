"""Workarounds for Paddle 3.3.1 defects met when auto-parallel runs on CPU over gloo.

Every patch here names the defect it works around, is applied only when the backend is gloo (or, for
the numpy one, only when numpy is new enough to trigger it), and has a test in
``tests/test_paddle_compat.py`` that fails when Paddle's behaviour changes, so each patch is
re-examined rather than silently kept. Nothing here runs on a GPU (NCCL) job. The process-wide
patches in force are :func:`applied`; ``Tensor.cuda`` is patched only inside
:func:`loading_checkpoints`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import pickle
import queue
import socket
import struct
import threading

import numpy as np

from llama_model._paddle import paddle
from llama_model.paddle_compat.tensors import local_value

VERIFIED_FOR = ("3.3",)
dist = paddle.distributed

_applied: set[str] = set()


def is_gloo() -> bool:
    """True when this process runs collectives over gloo (Paddle's launcher picks it on CPU)."""
    backend = os.environ.get("PADDLE_DISTRI_BACKEND", "")
    if backend:
        return backend.lower() == "gloo"
    return not paddle.is_compiled_with_cuda()


def _numpy_at_least_2_4() -> bool:
    major, minor = (int(p) for p in np.__version__.split(".")[:2])
    return (major, minor) >= (2, 4)


# ---------------------------------------------------------------------------------------------------
# Defect 1 (any backend, numpy >= 2.4): ProcessMesh.get_rank_by_dim_and_process_id does
# ``int(np.where(mesh == pid)[i])`` on a one-element 1-D array, a TypeError since numpy 2.4. It is on
# the path of dist.shard_dataloader and of the pipelining schedules.
def _get_rank_by_dim_and_process_id(self, dim, process_id):
    if process_id not in self._process_ids:
        return -1
    if dim is None:
        return 0
    dim_name = self._dim_names[dim] if isinstance(dim, int) else dim
    return int(np.where(self._mesh == process_id)[self._dim_names.index(dim_name)].reshape(-1)[0])


def patch_process_mesh_for_numpy() -> None:
    from paddle.distributed.auto_parallel.process_mesh import ProcessMesh

    ProcessMesh.get_rank_by_dim_and_process_id = _get_rank_by_dim_and_process_id
    _applied.add("process_mesh_numpy")


# ---------------------------------------------------------------------------------------------------
# Defect 2 (gloo): ProcessGroupGloo's constructor (collective._new_process_group_impl) rendezvouses
# through the *global* TCPStore with unprefixed keys, so disjoint groups created at the same moment
# read each other's addresses ("Connection refused" / gloo TIMEOUT). Not a patch: every group is
# created by every rank in one order with a barrier after each (``new_groups_in_order``).
def new_groups_in_order(rank_lists):
    """Create each group on every rank, in the given order, a barrier after each; returns the list."""
    groups = []
    for ranks in rank_lists:
        groups.append(dist.new_group(sorted(int(r) for r in ranks)))
        if is_gloo():
            dist.barrier()
    return groups


# ---------------------------------------------------------------------------------------------------
# Defect 3 (gloo): gloo send blocks until the matching recv is posted, but the pipelining schedules
# (pipelining.schedules._batch_p2p) post every send of a batch before its receives; 1F1B's steady
# state has two neighbours each sending to the other first, and deadlocks ("unbound_buffer.cc TIMEOUT").
# Run each batch as blocking send/recv ordered per peer: with a lower-ranked peer receive first,
# with a higher-ranked peer send first.
class _Completed:
    def wait(self):
        return True


def _ordered_blocking_p2p(p2p_ops, desc=None):
    if not p2p_ops:
        return None
    me = dist.get_rank()

    def order(op):
        is_send = op.op in (dist.isend, dist.send)
        first = is_send if op.peer > me else not is_send
        return (op.peer, 0 if first else 1)

    for op in sorted(p2p_ops, key=order):
        if op.op in (dist.isend, dist.send):
            dist.send(op.tensor, op.peer, group=op.group)
        else:
            dist.recv(op.tensor, op.peer, group=op.group)
    return _Completed()


def patch_pipeline_p2p_ordering() -> None:
    from paddle.distributed.auto_parallel.pipelining import schedules

    schedules._batch_p2p = _ordered_blocking_p2p
    _applied.add("pipeline_p2p")


# Defect 3, continued: no blocking order serves the interleaved schedule (VPP sends in both
# directions between one pair of ranks within one step, in an order the peer does not mirror) or
# more than two stages (a middle stage's two peers): both deadlock ("pair.cc TIMEOUT"). There the
# schedules' p2p goes over this module's own sockets instead: a send queues the tensor's bytes for
# a writer thread and returns (buffered, as NCCL's isend is), a reader thread per peer queues what
# arrives, and a receive takes the next message of that peer: messages of one directed pair arrive
# in the order they were sent, as over NCCL. One TCP connection per directed pair, TCP_NODELAY; the
# addresses are published once in the job's TCPStore (whose own round trips cost ~44 ms each: too
# slow to carry the messages). pp2 FThenB/1F1B keep gloo with the ordering above.
class SocketP2P:
    TIMEOUT_S = 1800.0  # as long as gloo's default: a peer that died fails the receive, not a hang

    def __init__(self, store, rank: int, host: str = "127.0.0.1"):
        self.store, self.rank = store, rank
        self._lock = threading.Lock()
        self._inbox: dict[int, queue.Queue] = {}
        self._outbox: dict[int, queue.Queue] = {}
        self._connections: list = []
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._server = socket.create_server((host, 0))
        port = self._server.getsockname()[1]
        self._start(self._accept, (), "p2p-accept")
        store.set(f"llama_model_p2p/address/{rank}", f"{host}:{port}".encode())

    def _start(self, target, args, name: str) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=name)
        self._threads.append(thread)
        thread.start()

    def close(self) -> None:
        """Stop the threads and close the sockets (at exit: threads still reading while the
        interpreter finalises crashed a rank with SIGSEGV)."""
        self._closing = True
        with self._lock:
            outboxes = list(self._outbox.values())
            connections = list(self._connections)
        for outbox in outboxes:
            outbox.put(None)
        for conn in [self._server, *connections]:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _queue(self, table: dict, peer: int) -> queue.Queue:
        with self._lock:
            return table.setdefault(peer, queue.Queue())

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:  # closed
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._connections.append(conn)
            peer = struct.unpack("<q", _read_exactly(conn, 8))[0]
            self._start(self._read, (conn, peer), f"p2p-from-{peer}")

    def _read(self, conn, peer: int) -> None:
        inbox = self._queue(self._inbox, peer)
        try:
            while True:
                size = struct.unpack("<q", _read_exactly(conn, 8))[0]
                inbox.put(_read_exactly(conn, size))
        except (OSError, EOFError) as exc:
            if not self._closing:
                inbox.put(exc)

    def _write(self, conn, outbox: queue.Queue) -> None:
        while True:
            payload = outbox.get()
            if payload is None:  # close()
                return
            conn.sendall(struct.pack("<q", len(payload)) + payload)

    def _put(self, peer: int, payload: bytes) -> None:
        with self._lock:
            outbox = self._outbox.get(peer)
        if outbox is None:
            self.store.wait(f"llama_model_p2p/address/{peer}")
            host, port = self.store.get(f"llama_model_p2p/address/{peer}").decode().rsplit(":", 1)
            conn = socket.create_connection((host, int(port)))
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(struct.pack("<q", self.rank))
            with self._lock:
                self._connections.append(conn)
            outbox = self._queue(self._outbox, peer)
            self._start(self._write, (conn, outbox), f"p2p-to-{peer}")
        outbox.put(payload)

    def _take(self, peer: int) -> bytes:
        try:
            item = self._queue(self._inbox, peer).get(timeout=self.TIMEOUT_S)
        except queue.Empty:
            raise RuntimeError(
                f"no pipeline message from rank {peer} in {self.TIMEOUT_S:.0f} s"
            ) from None
        if isinstance(item, Exception):
            raise RuntimeError(f"the pipeline connection from rank {peer} closed: {item}")
        return item

    def send(self, tensor, peer: int) -> None:
        self._put(peer, _host_array(local_value(tensor)).tobytes())

    def recv(self, tensor, peer: int) -> None:
        local = local_value(tensor)
        data = np.frombuffer(self._take(peer), dtype=_numpy_dtype(local.dtype))
        local.copy_(paddle.to_tensor(data.reshape(local.shape)), False)

    # The stages' shape exchange of the first step (``dist.send_object_list``): Paddle pickles the
    # tensor metadata and sends it over the stage's group, whose gloo tags count every operation on
    # the group, so two ranks of a group of four never agree on one (pp4 timed out there). Same
    # pickled metadata, between two ranks of this job, carried by these sockets.
    def send_object_list(self, objects, dst: int, group=None) -> None:
        self._put(dst, pickle.dumps(list(objects)))

    def recv_object_list(self, objects, src: int, group=None) -> None:
        objects[:] = pickle.loads(self._take(src))  # a rank of this job wrote it

    def batch(self, p2p_ops, desc=None):
        """The schedules' ``_batch_p2p``: every send first (they do not block), then the receives."""
        if not p2p_ops:
            return None
        for op in p2p_ops:
            if op.op in (dist.isend, dist.send):
                self.send(op.tensor, op.peer)
        for op in p2p_ops:
            if op.op not in (dist.isend, dist.send):
                self.recv(op.tensor, op.peer)
        return _Completed()


# The transport's own copies to the host, through the method as Paddle defines it: host_reads
# counts the reads a training step makes on a device, and this transport exists on CPU only.
_host_array = paddle.Tensor.numpy


@functools.cache
def _numpy_dtype(dtype) -> np.dtype:
    """numpy's dtype for a Paddle one, from an empty tensor (not by reading a receive buffer)."""
    return _host_array(paddle.empty([0], dtype=dtype)).dtype


def _read_exactly(conn, size: int) -> bytes:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = conn.recv_into(view[got:])
        if n == 0:
            raise EOFError("connection closed")
        got += n
    return bytes(buffer)


def use_socket_p2p() -> None:
    """Carry the pipelining schedules' p2p and shape exchange over SocketP2P; gloo only."""
    if not is_gloo() or "pipeline_p2p_sockets" in _applied:
        return
    from paddle.base import core
    from paddle.distributed.auto_parallel.pipelining import schedules, stage

    p2p = SocketP2P(core.create_or_get_global_tcp_store(), dist.get_rank(), _host())
    atexit.register(p2p.close)
    schedules._batch_p2p = p2p.batch
    stage.dist = _StageDistributed(p2p)
    _applied.add("pipeline_p2p_sockets")


def _host() -> str:
    """This rank's address as Paddle's launcher gives it (reachable by the other nodes)."""
    endpoint = os.environ.get("PADDLE_CURRENT_ENDPOINT", "")
    return endpoint.rsplit(":", 1)[0] if ":" in endpoint else "127.0.0.1"


def socket_p2p_groups(rank_lists):
    """Pipeline groups for SocketP2P: Paddle ``Group`` descriptions (ranks, this rank's place)
    without a gloo process group, which the socket transport does not use. Creating real ones
    rendezvouses on the global store's unprefixed keys (defect 2), and groups of four ranks read
    each other's addresses there even one at a time ("address.cc: 136 vs 317" under dp2pp4)."""
    from paddle.distributed.communication.group import Group

    me = dist.get_rank()
    return [
        Group(ranks.index(me) if me in ranks else -1, _SOCKET_GROUP_IDS + i, list(ranks))
        for i, ranks in enumerate(rank_lists)
    ]


_SOCKET_GROUP_IDS = 1_000_000  # out of the way of the ids Paddle numbers its groups with


class _StageDistributed:
    """``paddle.distributed`` as pipelining/stage.py sees it under SocketP2P: its object exchange
    over the sockets, everything else Paddle's."""

    def __init__(self, p2p: SocketP2P):
        self.send_object_list = p2p.send_object_list
        self.recv_object_list = p2p.recv_object_list

    def __getattr__(self, name):
        return getattr(dist, name)


# ---------------------------------------------------------------------------------------------------
# Defect 4 (CPU build): the resharding communicators of dist.load_state_dict (flex_checkpoint
# reshard_comm) call tensor.cuda() unconditionally: "ValueError: No available device found." Gloo
# collectives work on CPU tensors, so .cuda() can return the tensor itself.
def _cuda_noop(self, *args, **kwargs):
    return self


@contextlib.contextmanager
def loading_checkpoints():
    """Around ``dist.load_state_dict`` on a CPU build: ``Tensor.cuda()`` returns the tensor."""
    if paddle.is_compiled_with_cuda():
        yield
        return
    original = paddle.Tensor.cuda
    paddle.Tensor.cuda = _cuda_noop
    try:
        yield
    finally:
        paddle.Tensor.cuda = original


# ---------------------------------------------------------------------------------------------------
# Defect 5 (gloo, to_static): auto_parallel/static/process_group.py ProcessGroup.instantiate knows
# only NCCL/BKCL/XCCL ("AssertionError: No CUDA device found"), and the static legacy barrier op has
# no CPU communicator. Create a gloo comm context per (ring id, ranks), each on its own TCPStore so
# disjoint rings cannot collide (defect 2), and route the eager barrier to dist.barrier().
# Only one communicator per rank is trustworthy afterwards: Paddle's CPU collective kernels ignore
# ring_id (static.py refuses the layouts that would need two).
_private_stores: list = []


def _store_port(value) -> int:
    if isinstance(value, (bytes, bytearray)):
        return int(value.decode())
    if isinstance(value, list):
        return int(bytes(value).decode())
    return int(value)


def _private_store(global_store, key: str, is_host: bool, nranks: int):
    import socket

    from paddle.base import core

    if is_host:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        global_store.set(
            key, str(port)
        )  # published first: the host constructor blocks for its peers
        store = core.TCPStore("127.0.0.1", port, True, nranks, 900)
    else:
        global_store.wait(key)
        store = core.TCPStore("127.0.0.1", _store_port(global_store.get(key)), False, nranks, 900)
    _private_stores.append(store)
    return store


def patch_static_process_groups() -> None:
    from paddle.base import core
    from paddle.distributed.auto_parallel.static import process_group
    from paddle.distributed.collective import _get_global_env

    if getattr(process_group.ProcessGroup.instantiate, "_llama_model_patch", False):
        return
    original = process_group.ProcessGroup.instantiate

    def instantiate(self):
        if self._is_instantiate:
            return
        if core.is_compiled_with_cuda() or core.is_compiled_with_xpu():
            return original(self)
        rank = _get_global_env().rank
        if self.id != 0 and self.nranks >= 2 and rank in self.ranks:
            ranks = sorted(self.ranks)
            key = f"llama_model/static_pg/{self.id}/" + "_".join(map(str, ranks))
            store = _private_store(
                core.create_or_get_global_tcp_store(), key, rank == ranks[0], len(ranks)
            )
            core.CommContextManager.create_gloo_comm_context(
                store, str(self.id), self.local_rank(rank), self.nranks
            )
        self._is_instantiate = True

    instantiate._llama_model_patch = True
    process_group.ProcessGroup.instantiate = instantiate

    legacy_barrier = paddle._legacy_C_ops.barrier

    def barrier(*args, **kwargs):
        if not paddle.in_dynamic_mode():
            return legacy_barrier(*args, **kwargs)
        dist.barrier()
        return args[0] if args else None

    paddle._legacy_C_ops.barrier = barrier
    _applied.add("static_process_groups")


def apply() -> list[str]:
    """Apply what this process needs; idempotent. Returns the names of the patches in force."""
    if _numpy_at_least_2_4():
        patch_process_mesh_for_numpy()
    if is_gloo():
        patch_pipeline_p2p_ordering()
    return sorted(_applied)


def applied() -> list[str]:
    return sorted(_applied)

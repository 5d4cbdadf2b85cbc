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
import hashlib
import hmac
import json
import math
import os
import queue
import secrets
import socket
import struct
import threading
import time
import typing

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
# read each other's addresses ("Connection refused" / gloo TIMEOUT). The groups this package makes
# are created by every rank in one order with a barrier after each (``new_groups_in_order``); those
# Paddle's own code makes get a store of their own (``groups_created_apart``).
def new_groups_in_order(rank_lists):
    """Create each group on every rank, in the given order, a barrier after each; returns the list."""
    groups = []
    for ranks in rank_lists:
        groups.append(dist.new_group(sorted(int(r) for r in ranks)))
        if is_gloo():
            dist.barrier()
    return groups


@contextlib.contextmanager
def groups_created_apart():
    """Within the block, each gloo group that Paddle's own code creates (``dist.to_static`` runs
    ``fleet.init``, whose hybrid topology makes the dp, mp, pp, sharding and sep groups one after
    another, with no barrier) rendezvouses on a store of its own, as the compiled programs' groups
    do (``patch_static_process_groups``). On the global store a rank that lagged behind left its
    previous address under the key the others read, and the compiled step's start-up failed with
    "Connection refused" (more often the more loaded the machine). The private
    stores listen on 127.0.0.1, so across nodes the groups keep the global store."""
    if not is_gloo() or _host() != "127.0.0.1":
        yield
        return
    from paddle.base import core
    from paddle.distributed import collective

    original = collective._new_process_group_impl

    def create(backend, store, rank, world_size, group_name, pg_options, group_id=0, **kwargs):
        if backend == "gloo" and group_id != 0:
            key = f"llama_model/dygraph_pg/{group_id}"
            store = _private_store(
                core.create_or_get_global_tcp_store(), key, rank == 0, world_size
            )
        return original(backend, store, rank, world_size, group_name, pg_options, group_id,
                        **kwargs)  # fmt: skip

    collective._new_process_group_impl = create
    try:
        yield
    finally:
        collective._new_process_group_impl = original


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
# addresses are published once in the job's TCPStore (a store round trip is far too slow to carry
# the messages themselves). pp2 FThenB/1F1B keep gloo with the ordering above.
#
# The port accepts only the job's own ranks: a connecting rank answers a fresh nonce with an HMAC
# keyed by a secret published in the job's TCPStore, so a process that reaches the port but not the
# store can neither claim a rank nor inject tensors (whoever can read the store is trusted, as gloo
# trusts it). Nothing received is unpickled: every message has a typed header (kind, dtype, shape,
# byte count) checked against the buffer it fills, and the stages' shape exchange is tagged JSON.
# A transport error (a peer gone, a failed send) fails this rank's next send or receive.
class P2PError(RuntimeError):
    """A failure of the pipeline transport; the message names the peer rank."""


_KEY = "llama_model_p2p"
_HANDSHAKE_S = 5.0  # a connection that has not proved it belongs to the job by then is dropped
_POLL_S = 0.25  # how often a waiting receive looks for a transport error
_MAGIC = b"llmp2p/1"
_NONCE = 16
_HELLO = struct.Struct("<8sq32s")  # magic, the connecting rank, HMAC-SHA256(secret, nonce + rank)
_ACCEPTED = b"\x01"
_TENSOR, _OBJECT = 1, 2
_MAX_NDIM = 8
_HEADER = struct.Struct(f"<BBB5xQ{_MAX_NDIM}q")  # kind, dtype code, ndim, byte count, shape
_MAX_OBJECT_BYTES = 1 << 20  # the shape exchange's JSON is a few hundred bytes
# The dtypes a message may carry and their sizes (known here: the reader threads check headers
# without calling Paddle); a header holds the dtype's place in this table + 1 (0: an object message).
_DTYPES = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4,
           "int16": 2, "int8": 1, "uint8": 1, "bool": 1}  # fmt: skip


class _Message(typing.NamedTuple):
    kind: int
    dtype: str | None
    shape: tuple[int, ...]
    payload: bytearray


class SocketP2P:
    """Point-to-point tensors and the stages' shape exchange between this job's ranks over TCP."""

    TIMEOUT_S = 1800.0  # as long as gloo's default, for a peer alive but silent

    def __init__(self, store, rank: int, host: str = "127.0.0.1"):
        self.store, self.rank = store, rank
        self._secret = _job_secret(store)
        self._lock = threading.Lock()
        self._inbox: dict[int, queue.Queue] = {}
        self._outbox: dict[int, queue.Queue] = {}
        self._connections: set[socket.socket] = set()
        self._accepted: set[int] = set()  # the peers whose connection passed the handshake
        self._threads: list[threading.Thread] = []
        self._writers: list[threading.Thread] = []
        self._failure: str | None = None
        self._closing = False
        self._server = socket.create_server((host, 0))
        port = self._server.getsockname()[1]
        self._start(self._accept, (), "p2p-accept")
        store.set(f"{_KEY}/address/{rank}", f"{host}:{port}".encode())

    # --- the public surface: tensors, the shape exchange's objects, the schedules' batches -------
    def send(self, tensor, peer: int) -> None:
        local = local_value(tensor)
        payload = _host_array(local).tobytes()
        header = _header(_TENSOR, _dtype_name(local.dtype), local.shape, len(payload))
        self._put(peer, header, payload)

    def recv(self, tensor, peer: int) -> None:
        local = local_value(tensor)
        message = self._take(peer, _TENSOR)
        got = (message.dtype, list(message.shape))
        want = (_dtype_name(local.dtype), list(local.shape))
        if got != want:
            raise P2PError(
                f"rank {peer} sent a {got[0]} {got[1]} tensor where this rank's receive buffer is "
                f"{want[0]} {want[1]}"
            )
        data = np.frombuffer(message.payload, dtype=_numpy_dtype(local.dtype))
        local.copy_(paddle.to_tensor(data.reshape(local.shape)), False)

    # The stages' shape exchange of the first step (``dist.send_object_list``): Paddle pickles the
    # tensor metadata and sends it over the stage's group, whose gloo tags count every operation on
    # the group, so two ranks of a group of four never agree on one (pp4 timed out there). Here the
    # same metadata travels as tagged JSON (``_encode_object``) between two ranks of this job.
    def send_object_list(self, objects, dst: int, group=None) -> None:
        payload = json.dumps(_encode_object(list(objects)), allow_nan=False).encode()
        self._put(dst, _header(_OBJECT, None, [], len(payload)), payload)

    def recv_object_list(self, objects, src: int, group=None) -> None:
        message = self._take(src, _OBJECT)
        try:
            received = _decode_object(json.loads(message.payload))
        except (ValueError, TypeError, RecursionError) as exc:
            raise P2PError(f"rank {src} sent an object list that does not decode: {exc}") from None
        if type(received) is not list or len(received) != len(objects):
            raise P2PError(f"rank {src} sent {_short(received)}; expected a list of {len(objects)}")
        objects[:] = received

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

    def close(self) -> None:
        """Send what is queued, then stop the threads and close the sockets (at exit: threads
        still reading while the interpreter finalises crashed a rank with SIGSEGV)."""
        with self._lock:
            self._closing = True
            outboxes, writers = list(self._outbox.values()), list(self._writers)
        for outbox in outboxes:
            outbox.put(None)
        deadline = time.monotonic() + 5
        for writer in writers:  # a peer that stopped reading holds its writer until the deadline
            writer.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            connections, threads = list(self._connections), list(self._threads)
        for conn in [self._server, *connections]:
            _close(conn)
        for thread in threads:
            thread.join(timeout=5)

    # --- sending: one connection and writer thread per peer, opened by the first send ------------
    def _put(self, peer: int, header: bytes, payload: bytes) -> None:
        self._raise_failure()
        with self._lock:
            outbox = self._outbox.get(peer)
        if outbox is None:
            conn, outbox = self._connect(peer), queue.Queue()
            writer = self._start(self._write, (conn, peer, outbox), f"p2p-to-{peer}")
            with self._lock:
                self._outbox[peer] = outbox
                self._writers.append(writer)
        outbox.put(header + payload)  # one write: a header alone would cost a packet of its own

    def _connect(self, peer: int) -> socket.socket:
        """A connection to ``peer`` that has passed its handshake."""
        self.store.wait(f"{_KEY}/address/{peer}")
        address = self.store.get(f"{_KEY}/address/{peer}").decode()
        host, port = address.rsplit(":", 1)
        try:
            conn = socket.create_connection((host, int(port)), timeout=_HANDSHAKE_S)
        except OSError as exc:
            raise P2PError(f"cannot connect to rank {peer} at {address}: {exc}") from None
        self._track(conn)
        try:
            nonce = _read_exactly(conn, _NONCE)
            conn.sendall(_HELLO.pack(_MAGIC, self.rank, _mac(self._secret, nonce, self.rank)))
            if _read_exactly(conn, len(_ACCEPTED)) != _ACCEPTED:
                raise EOFError("unexpected answer")
        except (OSError, EOFError) as exc:
            self._drop(conn)
            raise P2PError(f"rank {peer} at {address} refused the handshake: {exc}") from None
        conn.settimeout(None)
        return conn

    def _write(self, conn, peer: int, outbox: queue.Queue) -> None:
        while (message := outbox.get()) is not None:  # None: close()
            try:
                conn.sendall(message)
            except OSError as exc:
                self._fail(peer, f"sending failed: {exc}")
                return

    # --- receiving: the accept loop, one thread per connection (handshake, then its messages) ----
    def _accept(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._server.accept()
            except OSError:  # closed, or a connection reset before it was accepted
                time.sleep(0.01)
                continue
            self._track(conn)
            self._start(self._serve, (conn,), "p2p-handshake")

    def _serve(self, conn) -> None:
        peer = self._handshake(conn)
        if peer is None:  # not one of the job's ranks: nothing it sent is read
            self._drop(conn)
            return
        threading.current_thread().name = f"p2p-from-{peer}"
        inbox = self._queue(peer)
        try:
            while (message := _read_message(conn)) is not None:
                inbox.put(message)
            reason = "closed the connection"
        except (OSError, EOFError, ValueError) as exc:  # a broken connection, a malformed header
            reason = str(exc)
        self._fail(peer, reason)

    def _handshake(self, conn) -> int | None:
        """The rank at the other end, or None when it does not prove it belongs to the job."""
        try:
            conn.settimeout(_HANDSHAKE_S)
            nonce = secrets.token_bytes(_NONCE)
            conn.sendall(nonce)
            magic, peer, mac = _HELLO.unpack(_read_exactly(conn, _HELLO.size))
            if magic != _MAGIC or not hmac.compare_digest(mac, _mac(self._secret, nonce, peer)):
                return None
            with self._lock:
                if peer in self._accepted:  # one connection per peer and direction
                    return None
                self._accepted.add(peer)
            conn.sendall(_ACCEPTED)
            conn.settimeout(None)
            return peer
        except (OSError, EOFError):
            return None

    def _take(self, peer: int, kind: int) -> _Message:
        """The next message from ``peer``, which must be of ``kind``."""
        inbox, deadline = self._queue(peer), time.monotonic() + self.TIMEOUT_S
        while (message := _poll(inbox)) is None:
            self._raise_failure()
            if time.monotonic() > deadline:
                raise P2PError(f"no message from rank {peer} in {self.TIMEOUT_S:.0f} s")
        if message.kind != kind:
            raise P2PError(
                f"rank {peer} sent {_KIND_NAMES[message.kind]} where {_KIND_NAMES[kind]} was expected"
            )
        return message

    # --- bookkeeping ------------------------------------------------------------------------------
    def _fail(self, peer: int, reason: str) -> None:
        """Record the first transport error: the next send, or receive finding no message, raises
        it (within _POLL_S for a receive already waiting)."""
        with self._lock:
            if self._failure is None and not self._closing:
                self._failure = f"pipeline peer rank {peer}: {reason}"

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise P2PError(self._failure)

    def _queue(self, peer: int) -> queue.Queue:
        with self._lock:
            return self._inbox.setdefault(peer, queue.Queue())

    def _track(self, conn) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._connections.add(conn)

    def _drop(self, conn) -> None:
        _close(conn)
        with self._lock:
            self._connections.discard(conn)

    def _start(self, target, args, name: str) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True, name=name)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()
        return thread


_KIND_NAMES = {_TENSOR: "a tensor", _OBJECT: "an object list"}


def _poll(inbox: queue.Queue) -> _Message | None:
    """The next message, or None after _POLL_S (the caller looks for a transport error)."""
    try:
        return inbox.get(timeout=_POLL_S)
    except queue.Empty:
        return None


def _job_secret(store) -> bytes:
    """The job's handshake secret: made by whichever rank asks first, read from the store by all."""
    if store.add(f"{_KEY}/secret-maker", 1) == 1:
        store.set(f"{_KEY}/secret", secrets.token_hex(32).encode())
    store.wait(f"{_KEY}/secret")
    return store.get(f"{_KEY}/secret")


def _mac(secret: bytes, nonce: bytes, rank: int) -> bytes:
    return hmac.new(secret, nonce + struct.pack("<q", rank), hashlib.sha256).digest()


def _header(kind: int, dtype: str | None, shape, nbytes: int) -> bytes:
    shape = [int(d) for d in shape]
    if len(shape) > _MAX_NDIM:
        raise P2PError(f"the pipeline transport carries tensors of up to {_MAX_NDIM} dimensions")
    code = 0 if dtype is None else list(_DTYPES).index(dtype) + 1
    return _HEADER.pack(kind, code, len(shape), nbytes, *shape, *[0] * (_MAX_NDIM - len(shape)))


def _read_message(conn) -> _Message | None:
    """The next message on ``conn``; None when the peer closed the connection between messages."""
    header = _read_exactly(conn, _HEADER.size, eof_ok=True)
    if header is None:
        return None
    kind, code, ndim, nbytes, *dims = _HEADER.unpack(header)
    dtype, shape = _check_header(kind, code, ndim, nbytes, dims)
    return _Message(kind, dtype, shape, _read_exactly(conn, nbytes))


def _check_header(kind, code, ndim, nbytes, dims) -> tuple[str | None, tuple[int, ...]]:
    """A header's dtype and shape, after checking that its fields agree with each other."""
    if kind == _OBJECT and code == 0 and ndim == 0 and nbytes <= _MAX_OBJECT_BYTES:
        return None, ()
    shape = tuple(dims[:ndim])
    if (
        kind != _TENSOR
        or not 1 <= code <= len(_DTYPES)
        or ndim > _MAX_NDIM
        or min(shape, default=0) < 0
    ):
        raise ValueError(
            f"malformed header (kind {kind}, dtype code {code}, ndim {ndim}, {nbytes} bytes)"
        )
    dtype = list(_DTYPES)[code - 1]
    if nbytes != math.prod(shape) * _DTYPES[dtype]:
        raise ValueError(f"header announces {nbytes} bytes for a {dtype} {list(shape)} tensor")
    return dtype, shape


def _read_exactly(conn, size: int, eof_ok: bool = False) -> bytearray | None:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = conn.recv_into(view[got:])
        if n == 0:
            if eof_ok and got == 0:
                return None
            raise EOFError(f"connection closed after {got} of {size} bytes")
        got += n
    return buffer


def _close(conn) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()


def _dtype_name(dtype) -> str:
    name = str(dtype).removeprefix("paddle.")
    if name not in _DTYPES:
        raise P2PError(f"the pipeline transport carries {', '.join(_DTYPES)}, not {name}")
    return name


# The transport's own copies to the host, through the method as Paddle defines it: host_reads
# counts the reads a training step makes on a device, and this transport exists on CPU only.
_host_array = paddle.Tensor.numpy


@functools.cache
def _numpy_dtype(dtype) -> np.dtype:
    """numpy's dtype for a Paddle one, from an empty tensor (not by reading a receive buffer)."""
    return _host_array(paddle.empty([0], dtype=dtype)).dtype


# What Paddle 3.3.1's pipelining stages send through send_object_list (stage.py, _shape_inference
# and _shape_inference_bwd): ``[outputs_meta]``, a tuple of ``TensorMeta`` (global shape as a
# paddle.Size, local shape, dtype, placements, stop_gradient), possibly with the non-tensor values
# of a stage's outputs left as they are. Each container and Paddle type is tagged; anything else is
# refused at the sender, and an unknown tag or field at the receiver.
_META_FIELDS = {"shape", "_local_shape", "dtype", "placements", "stop_gradient"}
_SCALARS = (type(None), bool, int, float, str)


def _tensor_meta_class():
    from paddle.distributed.auto_parallel.pipelining.utils import TensorMeta

    return TensorMeta


def _encode_object(obj):
    if type(obj) in _SCALARS:
        return obj
    if type(obj) in (list, tuple):
        return {"type": type(obj).__name__, "items": [_encode_object(x) for x in obj]}
    if type(obj) is _tensor_meta_class():
        return _encode_tensor_meta(obj)
    raise TypeError(
        "send_object_list carries None, bool, int, float, str, list, tuple and Paddle's "
        f"TensorMeta, not {_short(obj)}"
    )


def _encode_tensor_meta(meta) -> dict:
    if set(vars(meta)) != _META_FIELDS:
        raise TypeError(
            f"Paddle's TensorMeta now has {sorted(vars(meta))}, not {sorted(_META_FIELDS)}"
        )
    placements = meta.placements
    return {
        "type": "TensorMeta",
        "shape": [int(d) for d in meta.shape],
        "local_shape": None if meta._local_shape is None else [int(d) for d in meta._local_shape],
        "dtype": _dtype_name(meta.dtype),
        "placements": None if placements is None else [_encode_placement(p) for p in placements],
        "stop_gradient": bool(meta.stop_gradient),
    }


def _encode_placement(placement) -> dict:
    if (
        isinstance(placement, dist.Shard)
        and placement.get_split_factor() == 1
        and placement.get_co_shard_order() == 0
    ):
        return {"type": "Shard", "dim": placement.get_dim()}
    if isinstance(placement, dist.Replicate):
        return {"type": "Replicate"}
    if isinstance(placement, dist.Partial):
        return {"type": "Partial", "reduce": placement.reduce_type().name}
    raise TypeError(f"send_object_list carries Shard(dim), Replicate and Partial, not {placement}")


def _decode_object(value):
    if type(value) in _SCALARS:
        return value
    tag = _tagged(value, {"list": {"items"}, "tuple": {"items"}, "TensorMeta": _META_JSON_FIELDS})
    if tag == "TensorMeta":
        return _decode_tensor_meta(value)
    items = [_decode_object(x) for x in _typed(value["items"], list)]
    return items if tag == "list" else tuple(items)


_META_JSON_FIELDS = {"shape", "local_shape", "dtype", "placements", "stop_gradient"}


def _decode_tensor_meta(fields: dict):
    """A TensorMeta as Paddle's constructor would have made it, without a tensor to read."""
    meta = object.__new__(_tensor_meta_class())
    meta.shape = paddle.Size(_shape(fields["shape"]))
    meta._local_shape = None if fields["local_shape"] is None else _shape(fields["local_shape"])
    meta.dtype = getattr(paddle, _one_of(fields["dtype"], _DTYPES))
    placements = fields["placements"]
    meta.placements = (
        None if placements is None else [_decode_placement(p) for p in _typed(placements, list)]
    )
    meta.stop_gradient = _typed(fields["stop_gradient"], bool)
    return meta


def _decode_placement(value):
    tag = _tagged(value, {"Shard": {"dim"}, "Replicate": set(), "Partial": {"reduce"}})
    if tag == "Shard":
        return dist.Shard(_typed(value["dim"], int))
    if tag == "Replicate":
        return dist.Replicate()
    reduce_types = dist.ReduceType.__members__
    return dist.Partial(reduce_types[_one_of(value["reduce"], reduce_types)])


def _tagged(value, schemas: dict[str, set[str]]) -> str:
    """The tag of ``value``, a dict with a known "type" and exactly that type's fields."""
    tag = _typed(value, dict).get("type")
    if tag not in schemas or set(value) != schemas[tag] | {"type"}:
        raise ValueError(f"unknown or malformed tagged value {_short(value)}")
    return tag


def _typed(value, kind):
    if type(value) is not kind:
        raise ValueError(f"expected a {kind.__name__}, got {_short(value)}")
    return value


def _shape(value) -> list[int]:
    return [_typed(d, int) for d in _typed(value, list)]


def _one_of(value, names):
    if type(value) is not str or value not in names:
        raise ValueError(f"unknown name {_short(value)}")
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def use_socket_p2p() -> None:
    """Carry the pipelining schedules' p2p and shape exchange over SocketP2P; gloo only. Paddle's
    own functions come back at exit or with :func:`stop_socket_p2p`."""
    global _socket_p2p
    if not is_gloo() or _socket_p2p is not None:
        return
    from paddle.base import core
    from paddle.distributed.auto_parallel.pipelining import schedules, stage

    p2p = SocketP2P(core.create_or_get_global_tcp_store(), dist.get_rank(), _host())
    _socket_p2p = (p2p, schedules._batch_p2p, stage.dist)
    schedules._batch_p2p = p2p.batch
    stage.dist = _StageDistributed(p2p)
    _applied.add("pipeline_p2p_sockets")
    atexit.register(stop_socket_p2p)


def stop_socket_p2p() -> None:
    """Give the schedules their own p2p back and close the transport; idempotent."""
    global _socket_p2p
    if _socket_p2p is None:
        return
    from paddle.distributed.auto_parallel.pipelining import schedules, stage

    p2p, schedules._batch_p2p, stage.dist = _socket_p2p
    _socket_p2p = None
    _applied.discard("pipeline_p2p_sockets")
    atexit.unregister(stop_socket_p2p)
    p2p.close()


_socket_p2p: tuple | None = None  # (transport, Paddle's _batch_p2p, stage.py's dist) while in use


def _host() -> str:
    """The address to listen on: loopback when every rank of the job runs on this machine (nothing
    else need reach the port), else this rank's address as Paddle's launcher gives it."""
    hosts = {
        e.rsplit(":", 1)[0] for e in os.environ.get("PADDLE_TRAINER_ENDPOINTS", "").split(",") if e
    }
    endpoint = os.environ.get("PADDLE_CURRENT_ENDPOINT", "")
    if len(hosts) <= 1 or ":" not in endpoint:
        return "127.0.0.1"
    return endpoint.rsplit(":", 1)[0]


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

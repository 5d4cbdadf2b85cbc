"""paddle_compat.gloo.SocketP2P against what can go wrong on a real network: processes that are not
the job's connecting to its port, a peer dying mid-message, messages that do not fit, and the
stages' shape exchange carried without pickle. Real sockets and threads, in one process (two ranks
sharing one TCPStore) unless a test needs a process to kill."""

import contextlib
import hashlib
import hmac
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import paddle
import paddle.distributed as dist
import pytest
from paddle.base import core
from paddle.distributed.auto_parallel.pipelining.utils import TensorMeta

from llama_model.paddle_compat import gloo
from llama_model.paddle_compat.gloo import P2PError, SocketP2P

pytestmark = pytest.mark.skipif(paddle.is_compiled_with_cuda(), reason="the CPU transport")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def store_port():
    return _free_port()


@pytest.fixture
def store(store_port):
    return core.TCPStore("127.0.0.1", store_port, True, 1, 30)


@pytest.fixture
def ranks(store):
    """``ranks(r)``: rank r of one job (a SocketP2P on the test's store), closed after the test."""
    made = []

    def make(rank):
        made.append(SocketP2P(store, rank))
        return made[-1]

    yield make
    for p2p in made:
        p2p.close()


def _address(store, rank) -> tuple[str, int]:
    host, port = store.get(f"llama_model_p2p/address/{rank}").decode().rsplit(":", 1)
    return host, int(port)


def _rest_until_closed(sock, within_s: float) -> bytes | None:
    """What the other end still sends before closing ``sock``; None if it is open after ``within_s``."""
    sock.settimeout(within_s)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return None
    return received


def _tensors(seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((2, 3)).astype(np.float32) for _ in range(3)]


def _exchange(r0, r1) -> list[np.ndarray]:
    """Rank 0 sends three tensors to rank 1; what rank 1 received."""
    sent = _tensors(0)
    for array in sent:
        r0.send(paddle.to_tensor(array), 1)
    got = [paddle.zeros([2, 3]) for _ in sent]
    for buffer in got:
        r1.recv(buffer, 0)
    return [buffer.numpy() for buffer in got]


def test_a_stranger_closing_early_or_staying_silent_does_not_stop_the_exchange(
    ranks, store, monkeypatch
):
    monkeypatch.setattr(gloo, "_HANDSHAKE_S", 0.5)
    r1 = ranks(1)
    # before any peer connects: one stranger closes at once (a port scan), one says nothing
    socket.create_connection(_address(store, 1)).close()
    silent = socket.create_connection(_address(store, 1))
    r0 = ranks(0)
    for got, sent in zip(_exchange(r0, r1), _tensors(0)):
        np.testing.assert_array_equal(got, sent)
    # dropped after its handshake timeout, having been sent nothing but the nonce
    assert len(_rest_until_closed(silent, within_s=5)) == gloo._NONCE
    silent.close()
    # and the accept loop still answers later peers: rank 2 connects after the strangers
    r2 = ranks(2)
    r2.send(paddle.to_tensor(np.arange(5, dtype=np.int64)), 1)
    back = paddle.zeros([5], dtype="int64")
    r1.recv(back, 2)
    np.testing.assert_array_equal(back.numpy(), np.arange(5))


def _stranger_claiming_rank_0(address, secret: bytes | None):
    """A process that is not the job's: a plausible hello as rank 0 (with a MAC under ``secret``,
    or none at all), then a well-formed tensor message of its own."""
    sock = socket.create_connection(address)
    nonce = sock.recv(gloo._NONCE)
    mac = (
        b""
        if secret is None
        else hmac.new(secret, nonce + (0).to_bytes(8, "little"), hashlib.sha256).digest()
    )
    forged = np.full((2, 3), 666.0, np.float32).tobytes()
    with contextlib.suppress(OSError):  # it may already be dropped
        sock.sendall(gloo._MAGIC + (0).to_bytes(8, "little") + mac)
        sock.sendall(gloo._header(gloo._TENSOR, "float32", [2, 3], len(forged)) + forged)
    return sock


def test_a_stranger_claiming_a_rank_is_dropped_and_its_tensors_never_arrive(ranks, store):
    r1 = ranks(1)
    strangers = [
        _stranger_claiming_rank_0(_address(store, 1), secret=None),
        _stranger_claiming_rank_0(_address(store, 1), secret=b"a guess" * 5),
    ]
    for sock in strangers:
        assert _rest_until_closed(sock, within_s=5) == b""  # dropped, never accepted
        sock.close()
    r0 = ranks(0)  # the real rank 0 still gets in
    for got, sent in zip(_exchange(r0, r1), _tensors(0)):
        np.testing.assert_array_equal(got, sent)
    assert r1._queue(0).empty()  # nothing more "from rank 0" than what rank 0 sent
    assert r1._accepted == {0}


_KILLED_PEER = """
import sys, time
from paddle.base import core
from llama_model.paddle_compat import gloo

store = core.TCPStore("127.0.0.1", int(sys.argv[1]), False, 1, 30)
conn = gloo.SocketP2P(store, 1)._connect(0)
# a 1024-float tensor's header and the first 100 of its 4096 bytes, then nothing
conn.sendall(gloo._header(gloo._TENSOR, "float32", [1024], 4096) + bytes(100))
print("sent", flush=True)
time.sleep(600)
"""


def test_a_peer_killed_mid_message_is_named_within_seconds(ranks, store_port):
    r0 = ranks(0)
    command = [sys.executable, "-c", _KILLED_PEER, str(store_port)]
    peer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if peer.stdout.readline() != "sent\n":
            peer.kill()
            pytest.fail(f"the peer process did not start: {peer.communicate()[1][-2000:]}")
        threading.Timer(0.5, os.kill, (peer.pid, signal.SIGKILL)).start()
        start = time.monotonic()
        with pytest.raises(
            P2PError, match=r"^pipeline peer rank 1: connection closed after 100 of 4096 bytes$"
        ):
            r0.recv(paddle.zeros([1024]), 1)  # waiting when the peer dies
        assert time.monotonic() - start < 10
    finally:
        peer.kill()
        peer.wait()
    # every later operation fails the same way, a send to another rank included
    with pytest.raises(P2PError, match=r"^pipeline peer rank 1: "):
        r0.send(paddle.zeros([1]), 2)


def test_messages_before_a_close_arrive_then_the_close_is_raised(ranks):
    r0, r1 = ranks(0), ranks(1)
    r0.send(paddle.to_tensor([1.5, 2.5]), 1)
    r0.close()
    got = paddle.zeros([2])
    r1.recv(got, 0)
    np.testing.assert_array_equal(got.numpy(), [1.5, 2.5])
    start = time.monotonic()
    with pytest.raises(P2PError, match=r"^pipeline peer rank 0: closed the connection$"):
        r1.recv(got, 0)
    assert time.monotonic() - start < 2


def test_a_failed_send_is_raised_by_a_later_send(ranks):
    r0, r1 = ranks(0), ranks(1)
    r0.send(paddle.zeros([4]), 1)
    r1.close()
    deadline = time.monotonic() + 5
    with pytest.raises(P2PError, match=r"^pipeline peer rank 1: sending failed: "):
        while time.monotonic() < deadline:  # the first sends may still fit the socket's buffer
            r0.send(paddle.zeros([4]), 1)
            time.sleep(0.05)


def test_every_dtype_the_header_names_arrives_exactly(ranks):
    """The header's size table agrees with Paddle's bytes for each dtype it carries."""
    r0, r1 = ranks(0), ranks(1)
    for dtype in gloo._DTYPES:
        sent = (paddle.arange(6).reshape([2, 3]) - 2).astype(dtype)
        r0.send(sent, 1)
        got = paddle.zeros([2, 3], dtype=dtype)
        r1.recv(got, 0)
        assert got.dtype == sent.dtype
        np.testing.assert_array_equal(got.numpy(), sent.numpy())


def test_the_receiver_checks_each_header_against_its_buffer(ranks):
    r0, r1 = ranks(0), ranks(1)
    r0.send(paddle.ones([2, 3]), 1)
    with pytest.raises(
        P2PError,
        match=r"^rank 0 sent a float32 \[2, 3\] tensor where this rank's receive buffer is float32 \[3, 2\]$",
    ):
        r1.recv(paddle.zeros([3, 2]), 0)
    r0.send(paddle.ones([2, 3]), 1)
    with pytest.raises(
        P2PError, match=r"^rank 0 sent a float32 \[2, 3\] tensor where .* int64 \[2, 3\]$"
    ):
        r1.recv(paddle.zeros([2, 3], dtype="int64"), 0)
    r0.send_object_list([None], 1)
    with pytest.raises(P2PError, match=r"^rank 0 sent an object list where a tensor was expected$"):
        r1.recv(paddle.zeros([2, 3]), 0)


def _stage_metadata():
    """What a stage sends (pipelining/stage.py: ``[outputs_meta]`` forward, ``[output_meta]``
    backward), first as a rank of dp2pp4 sent it in this project's runs: a dist activation's
    TensorMeta, global [2, 32, 64], local [1, 32, 64], Shard(0) over dp, stop_gradient False
    forward and True backward; then the other values a TensorMeta or a stage's outputs can hold."""
    mesh = dist.ProcessMesh([[0]], dim_names=["dp", "mp"])
    activation = dist.shard_tensor(
        paddle.zeros([2, 32, 64]), mesh, [dist.Shard(0), dist.Replicate()]
    )
    forward, backward, partial = (TensorMeta(activation) for _ in range(3))
    for meta in (forward, backward, partial):
        meta._local_shape = [1, 32, 64]  # rank 0 of dp2 (this process's mesh has one rank)
    forward.stop_gradient = False
    partial.placements = [dist.Partial(dist.ReduceType.kRedMax), dist.Replicate()]
    dense = TensorMeta(paddle.zeros([3], dtype="int64"))  # no placements, no local shape
    return [(forward, backward, partial, dense, None, 3, 0.5, "x", [True, (1, 2)])]


def test_the_shape_exchange_round_trips_what_paddle_sends(ranks):
    r0, r1 = ranks(0), ranks(1)
    sent = _stage_metadata()
    r0.send_object_list(sent, 1)
    got = [None]
    r1.recv_object_list(got, 0)
    assert type(got) is list and len(got) == 1 and type(got[0]) is tuple
    metas, sent_metas = got[0][:4], sent[0][:4]
    for meta, original in zip(metas, sent_metas):
        assert type(meta) is TensorMeta and type(meta.shape) is paddle.Size
        assert vars(meta) == vars(original)
    assert vars(metas[0]) == {"shape": [2, 32, 64], "_local_shape": [1, 32, 64], "dtype": paddle.float32,
                              "placements": [dist.Shard(0), dist.Replicate()], "stop_gradient": False}  # fmt: skip
    assert metas[3].dtype == paddle.int64 and metas[3].placements is None
    assert got[0][4:] == (None, 3, 0.5, "x", [True, (1, 2)])
    # Paddle's receiving side builds its buffers from it
    from paddle.distributed.auto_parallel.pipelining.stage import _make_tensor_from_meta

    buffer = _make_tensor_from_meta(metas[0])
    assert buffer.shape == [1, 32, 64] and buffer.dtype == paddle.float32


@pytest.mark.parametrize(
    ("obj", "refused"),
    [
        (object(), "not <object object"),
        ({"shape": [2]}, "not {'shape': [2]}"),
        (np.int64(3), "not np.int64(3)"),
        (paddle.float32, "not <DataType.FLOAT32: 10>"),
    ],
    ids=["object", "dict", "numpy-int", "bare-dtype"],
)
def test_the_shape_exchange_refuses_what_json_cannot_say(ranks, obj, refused):
    r0, r1 = ranks(0), ranks(1)
    with pytest.raises(TypeError, match=f"^send_object_list carries None, .*{re.escape(refused)}"):
        r0.send_object_list([(obj,)], 1)
    # nothing of it went out: the next exchange is intact
    r0.send_object_list([(1, 2)], 1)
    got = [None]
    r1.recv_object_list(got, 0)
    assert got == [(1, 2)]


def test_the_shape_exchange_refuses_placements_it_cannot_rebuild(ranks):
    meta = TensorMeta(paddle.zeros([4]))
    meta.placements = [dist.Shard(0, split_factor=2)]
    with pytest.raises(TypeError, match=r"carries Shard\(dim\), Replicate and Partial, not Shard"):
        ranks(0).send_object_list([(meta,)], 1)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"type": "pickle", "items": []}',
        b"[1, 2]",  # an untagged list
        b'{"type": "list", "items": [{"type": "TensorMeta", "shape": [2], "dtype": "float32"}]}',
        b'{"type": "list", "items": [{"type": "TensorMeta", "shape": [2], "local_shape": null,'
        b' "dtype": "object", "placements": null, "stop_gradient": true}]}',
        b"\x80\x04K\x01.",  # a pickle
    ],
    ids=["unknown-tag", "untagged", "missing-fields", "unknown-dtype", "pickle"],
)
def test_the_receiver_refuses_objects_it_does_not_know(ranks, payload):
    r0, r1 = ranks(0), ranks(1)
    r0._put(1, gloo._header(gloo._OBJECT, None, [], len(payload)), payload)
    with pytest.raises(P2PError, match=r"^rank 0 sent an object list that does not decode: "):
        r1.recv_object_list([None], 0)


def test_use_socket_p2p_gives_paddle_its_functions_back(store, monkeypatch):
    from paddle.distributed.auto_parallel.pipelining import schedules, stage

    monkeypatch.setattr(core, "create_or_get_global_tcp_store", lambda: store)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(gloo, "is_gloo", lambda: True)
    batch_p2p, stage_dist, applied = schedules._batch_p2p, stage.dist, gloo.applied()
    gloo.use_socket_p2p()
    try:
        assert isinstance(schedules._batch_p2p.__self__, SocketP2P)
        assert stage.dist.send_object_list == schedules._batch_p2p.__self__.send_object_list
        assert "pipeline_p2p_sockets" in gloo.applied()
    finally:
        gloo.stop_socket_p2p()
    assert schedules._batch_p2p is batch_p2p and stage.dist is stage_dist is dist
    assert gloo.applied() == applied
    gloo.stop_socket_p2p()  # idempotent


@pytest.mark.parametrize(
    ("endpoints", "current", "host"),
    [
        ("", "", "127.0.0.1"),  # not launched
        ("10.0.0.5:6170,10.0.0.5:6171", "10.0.0.5:6171", "127.0.0.1"),  # one node
        ("10.0.0.5:6170,10.0.0.6:6170", "10.0.0.6:6170", "10.0.0.6"),  # two nodes
    ],
)
def test_the_transport_listens_on_loopback_unless_the_job_spans_nodes(
    monkeypatch, endpoints, current, host
):
    monkeypatch.setenv("PADDLE_TRAINER_ENDPOINTS", endpoints)
    monkeypatch.setenv("PADDLE_CURRENT_ENDPOINT", current)
    assert gloo._host() == host

"""Each paddle_compat.gloo patch exists because of a Paddle 3.3.1 defect. These tests pin the defect down:
when one of them fails, Paddle changed underneath the patch; re-check whether the patch is still
needed (and still right) before relaxing the test."""

import inspect
import warnings

import numpy as np
import paddle
import paddle.distributed as dist
import pytest

from llama_model.paddle_compat import gloo as gloo_compat

pytestmark = pytest.mark.skipif(paddle.is_compiled_with_cuda(), reason="CPU-build defects")


@pytest.fixture(autouse=True)
def _unpatched():
    # This process never initialised a distributed environment, so nothing was patched.
    assert gloo_compat.applied() == [] or gloo_compat.applied() == ["process_mesh_numpy"]


def test_defect1_process_mesh_converts_a_1d_array_to_int():
    from paddle.distributed.auto_parallel.process_mesh import ProcessMesh

    mesh = ProcessMesh(np.arange(8).reshape(2, 2, 2).tolist(), dim_names=["pp", "dp", "mp"])
    original = ProcessMesh.__dict__["get_rank_by_dim_and_process_id"]
    if "process_mesh_numpy" not in gloo_compat.applied():
        # numpy < 2.4 warns (DeprecationWarning), numpy >= 2.4 raises: either way Paddle still does
        # int() on a one-element array.
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            with pytest.raises((DeprecationWarning, TypeError)):
                original(mesh, "dp", 6)
    # the replacement gives the coordinate along the named dim
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        coords = np.argwhere(np.arange(8).reshape(2, 2, 2) == 6)[0]
        assert [
            gloo_compat._get_rank_by_dim_and_process_id(mesh, d, 6) for d in ("pp", "dp", "mp")
        ] == list(coords)
        assert gloo_compat._get_rank_by_dim_and_process_id(mesh, "dp", 9) == -1


def test_defect2_gloo_groups_rendezvous_on_the_global_store():
    from paddle.distributed import collective

    source = inspect.getsource(collective._new_process_group_impl)
    # the gloo group is built straight on the global store, with no per-group key prefix
    assert "core.ProcessGroupGloo.create(store, rank, world_size, group_id)" in source


def test_defect3_pipeline_posts_every_p2p_op_of_a_batch_at_once():
    from paddle.distributed.auto_parallel.pipelining import schedules

    assert schedules._batch_p2p is not gloo_compat._ordered_blocking_p2p
    assert "dist.batch_isend_irecv(p2p_ops)" in inspect.getsource(schedules._batch_p2p)


def test_defect3_replacement_orders_ops_per_peer(monkeypatch):
    calls = []
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "send", lambda t, peer, group=None: calls.append(("send", peer)))
    monkeypatch.setattr(dist, "recv", lambda t, peer, group=None: calls.append(("recv", peer)))

    class Op:
        def __init__(self, op, peer):
            self.op, self.peer, self.tensor, self.group = op, peer, None, None

    # the order a 1F1B steady state posts them: sends first
    ops = [Op(dist.isend, 2), Op(dist.isend, 0), Op(dist.irecv, 2), Op(dist.irecv, 0)]
    assert gloo_compat._ordered_blocking_p2p(ops).wait()
    # with the lower peer 0: receive before sending; with the higher peer 2: send before receiving
    assert calls == [("recv", 0), ("send", 0), ("send", 2), ("recv", 2)]


def test_defect3_socket_transport_buffers_sends_in_order():
    """Two ranks in one process over real sockets: each sends before the other receives (blocking
    gloo sends deadlock on exactly that), several messages queue up per direction, and values,
    dtypes, order and objects (the stages' shape exchange, as JSON) arrive intact."""
    import socket

    from paddle.base import core

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = core.TCPStore("127.0.0.1", port, True, 1, 30)
    r0, r1 = gloo_compat.SocketP2P(store, 0), gloo_compat.SocketP2P(store, 1)
    msgs = [paddle.to_tensor(np.full((2, 3), i, np.float32) + 0.5) for i in range(3)]
    for m in msgs:
        r0.send(m, 1)
    r1.send(paddle.to_tensor(np.arange(4, dtype=np.int64)), 0)
    r1.send_object_list([("meta", (2, 3))], 0)
    back, obj = paddle.zeros([4], dtype="int64"), [None]
    r0.recv(back, 1)
    r0.recv_object_list(obj, 1)
    np.testing.assert_array_equal(back.numpy(), np.arange(4))
    assert obj == [("meta", (2, 3))]
    got = [paddle.zeros([2, 3]) for _ in range(3)]
    for g in got:
        r1.recv(g, 0)
    for g, m in zip(got, msgs):
        np.testing.assert_array_equal(g.numpy(), m.numpy())
    for p2p in (r0, r1):  # what runs at exit: every thread stops, every socket closes
        p2p.close()
        assert not any(thread.is_alive() for thread in p2p._threads)


def test_defect3_stages_exchange_tensor_meta_through_send_object_list():
    """What SocketP2P's JSON carries for the stages' shape exchange: ``[outputs_meta]`` (forward)
    and ``[output_meta]`` (backward), tuples of TensorMeta with exactly these fields."""
    from paddle.distributed.auto_parallel.pipelining import stage
    from paddle.distributed.auto_parallel.pipelining.utils import TensorMeta

    source = inspect.getsource(stage)
    assert source.count("dist.send_object_list(") == 2
    assert "[outputs_meta]," in source and "[output_meta], dst=self.prev_rank" in source
    assert set(vars(TensorMeta(paddle.zeros([2])))) == gloo_compat._META_FIELDS


def test_defect4_tensor_cuda_raises_on_a_cpu_build():
    assert paddle.Tensor.cuda is not gloo_compat._cuda_noop
    with pytest.raises(ValueError, match="No available device"):
        paddle.to_tensor([1.0]).cuda()


def test_defect5_static_process_group_knows_only_gpu_backends(monkeypatch):
    from types import SimpleNamespace

    from paddle.distributed.auto_parallel.static import process_group
    from paddle.distributed.auto_parallel.static.process_group import ProcessGroup

    assert not getattr(ProcessGroup.instantiate, "_llama_model_patch", False)
    # rank 0 of a two-rank job on a CPU build, as a launched gloo worker sees itself
    env = SimpleNamespace(rank=0, trainer_endpoints=["127.0.0.1:1", "127.0.0.1:2"],
                          current_endpoint="127.0.0.1:1", device_id=0, device_type="cpu")  # fmt: skip
    monkeypatch.setattr(process_group, "_get_global_env", lambda: env)
    with pytest.raises(AssertionError, match="No CUDA device found"):
        ProcessGroup(4242, [0, 1]).instantiate()


def test_tensor_cuda_is_patched_only_while_loading_checkpoints():
    with gloo_compat.loading_checkpoints():
        t = paddle.to_tensor([1.0])
        assert t.cuda() is t
    assert paddle.Tensor.cuda is not gloo_compat._cuda_noop
    with pytest.raises(ValueError, match="No available device"):
        paddle.to_tensor([1.0]).cuda()


def test_an_unverified_paddle_is_refused_in_one_line(monkeypatch):
    from llama_model import LlamaModelError
    from llama_model.paddle_compat import UNVERIFIED_ENV, check_paddle_version

    check_paddle_version(paddle.__version__)  # the Paddle these tests run on is a verified one
    check_paddle_version("3.3.7")
    monkeypatch.delenv(UNVERIFIED_ENV, raising=False)
    for version in ("3.4.0", "0.0.0", "2.6.2"):
        with pytest.raises(
            LlamaModelError, match=f"^Paddle {version} is not one .*{UNVERIFIED_ENV}=1"
        ):
            check_paddle_version(version)
    # a module re-verified for a new series drops out of the list; the others still refuse it
    from llama_model.paddle_compat import ADAPTERS, unverified_adapters

    monkeypatch.setattr(gloo_compat, "VERIFIED_FOR", ("3.3", "3.4"))
    assert unverified_adapters("3.4.0") == [a for a in ADAPTERS if a != "gloo"]
    with pytest.raises(LlamaModelError, match=r"\(kernels, launch, optimizer, pipelining, "):
        check_paddle_version("3.4.0")
    monkeypatch.setenv(UNVERIFIED_ENV, "1")
    check_paddle_version("3.4.0")

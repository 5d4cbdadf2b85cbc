"""The rules behind restarts, hang detection, the wall-clock limit and the cluster topology, each
against values worked out by hand (the jobs themselves are in faults/test_resilience.py)."""

import re
import shlex
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import TINY, run_cli

from llama_train import hangwatch
from llama_train.cluster import derived_port, parse_hostlist, resolve_topology, slurm_gpus_on_node
from llama_train.errors import TrainError
from llama_train.options import Launch, hang_timeout_s, parse_duration
from llama_train.restarts import backoff_s


@pytest.mark.parametrize(
    "text, hosts",
    [
        ("gpu001", ["gpu001"]),
        ("gpu[001-004,010]", ["gpu001", "gpu002", "gpu003", "gpu004", "gpu010"]),
        ("a-[1-2]-b,c", ["a-1-b", "a-2-b", "c"]),
        ("node[8-11]", ["node8", "node9", "node10", "node11"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("x[09-11],y[1],z", ["x09", "x10", "x11", "y1", "z"]),
        ("cn-[0998-1000].cluster", ["cn-0998.cluster", "cn-0999.cluster", "cn-1000.cluster"]),
    ],
)
def test_slurm_hostlists_expand_in_order(text, hosts):
    assert parse_hostlist(text) == hosts


@pytest.mark.parametrize("text", ["gpu[1-", "gpu[a-b]", "gpu]1[", "g[1-2]]"])
def test_a_malformed_hostlist_is_one_line(text):
    with pytest.raises(TrainError, match="malformed Slurm host list"):
        parse_hostlist(text)


@pytest.mark.parametrize(
    "env, gpus",
    [
        ({"SLURM_GPUS_ON_NODE": "4"}, 4),
        ({"SLURM_STEP_GPUS": "0,1,2"}, 3),
        ({"SLURM_JOB_GPUS": "4,5,6,7"}, 4),
        ({"SLURM_GPUS_PER_NODE": "a100:8"}, 8),
        ({"SLURM_GPUS_PER_NODE": "gpu:h100:2,gpu:a100:2"}, 4),
        ({"SLURM_GPUS_PER_NODE": "8"}, 8),
        ({}, None),
    ],
)
def test_the_gpus_slurm_gives_a_node(env, gpus):
    assert slurm_gpus_on_node(env) == gpus


def test_slurm_topology_from_the_variables_only():
    env = {"SLURM_JOB_ID": "123456", "SLURM_NNODES": "4", "SLURM_NODEID": "2",
           "SLURM_JOB_NODELIST": "localhost,gpu[002-004]", "SLURM_GPUS_ON_NODE": "2"}  # fmt: skip
    topology = resolve_topology(Launch(), 8, env)
    assert (topology.nnodes, topology.node_rank, topology.nproc_per_node) == (4, 2, 2)
    assert topology.master == f"127.0.0.1:{20000 + 123456 % 10000}" == "127.0.0.1:23456"
    assert topology.source == "slurm"
    assert topology.describe() == (
        "topology: 4 node(s) × 2 process(es), this node 2, master 127.0.0.1:23456 (from Slurm: "
        "job 123456, SLURM_NNODES=4, SLURM_NODEID=2, master localhost (first of "
        "SLURM_JOB_NODELIST), 2 GPU(s) per node)"
    )
    # --master-port wins over the derived one; --nnodes means the options alone
    assert resolve_topology(Launch(master_port=29500), 8, env).master == "127.0.0.1:29500"
    given = resolve_topology(Launch(nnodes=1), 8, env)
    assert (given.source, given.nnodes, given.nproc_per_node) == ("options", 1, 8)
    # the strategy must fit what Slurm gives
    with pytest.raises(TrainError) as info:
        resolve_topology(Launch(), 16, env)
    assert str(info.value) == (
        "the strategy needs 16 processes but the topology has 4 node(s) × 2 = 8 (job 123456, "
        "SLURM_NNODES=4, SLURM_NODEID=2, master localhost (first of SLURM_JOB_NODELIST), 2 GPU(s) "
        "per node)"
    )
    assert derived_port("123456") == derived_port("123456") and 20000 <= derived_port("x_7") < 30000


def test_kubernetes_topology_from_a_paddlejob():
    env = {"PADDLE_MASTER": "localhost:37777", "PADDLE_NNODES": "2", "PADDLE_RANK": "1"}
    topology = resolve_topology(Launch(), 4, env)
    assert (topology.source, topology.nnodes, topology.node_rank) == ("kubernetes", 2, 1)
    assert topology.master == "127.0.0.1:37777" and topology.nproc_per_node == 2
    if not socket.gethostname()[-1].isdigit():  # without PADDLE_RANK: the pod name's index
        with pytest.raises(TrainError, match="set PADDLE_RANK"):
            resolve_topology(Launch(), 4, {k: v for k, v in env.items() if k != "PADDLE_RANK"})


@pytest.mark.parametrize(
    "text, seconds",
    [("3h50m", 13800), ("45m", 2700), ("90s", 90), ("5400", 5400), ("1h30m15s", 5415),
     ("1.5h", 5400), ("0.5m", 30)],
)  # fmt: skip
def test_durations(text, seconds):
    assert parse_duration(text, "--max-duration") == seconds


@pytest.mark.parametrize("text", ["", "0", "-5", "3x", "h", "nan", "inf", "5m3h"])
def test_a_bad_duration_is_one_line(text):
    with pytest.raises(TrainError) as info:
        parse_duration(text, "--max-duration")
    assert str(info.value) == (
        f"--max-duration must be a duration such as 3h50m, 45m, 90s or seconds, got {text!r}"
    )


def test_hang_timeout_values():
    assert (
        hang_timeout_s("auto") is None and hang_timeout_s("0") == 0 and hang_timeout_s("20") == 20
    )
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(TrainError, match="--hang-timeout must be SECONDS"):
            hang_timeout_s(bad)


def test_backoff_doubles_from_5s_to_5min():
    assert [backoff_s(n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]


def test_the_auto_hang_allowances():
    auto, fixed = hangwatch.Policy(None, eval_iters=10), hangwatch.Policy(20.0)
    steps = [1.0, 30.0, 2.0]  # median 2 s

    def allow(policy, phase, completed=5, first=1, save=None, evals=None, measured=steps):
        return hangwatch.allowance(policy, phase, completed, first, measured, save, evals)

    assert allow(auto, "start-up") == hangwatch.STARTUP_S == 1800
    assert allow(auto, "step", completed=0) == 1800  # the first step of a start
    assert allow(auto, "step") == 120  # max(120, 10 × 2)
    assert allow(auto, "step", measured=[20.0, 30.0, 40.0]) == 300  # 10 × 30
    assert allow(auto, "step", measured=[]) == 1800
    assert allow(auto, "save") == 1800 and allow(auto, "save", save=100.0) == 300
    assert allow(auto, "save", save=10.0) == 120
    assert allow(auto, "eval") == 200  # 10 × 10 iters × 2 s
    assert allow(auto, "eval", evals=50.0) == 150
    assert allow(fixed, "step") == allow(fixed, "save") == allow(fixed, "eval") == 20
    assert allow(fixed, "start-up") == 1800 and allow(hangwatch.Policy(3600.0), "start-up") == 3600


def test_resilience_options_are_refused_in_one_line(tiny_corpus, tmp_path):
    for flag, value, line in [
        ("--max-duration", "soon", "Error: --max-duration must be a duration such as 3h50m, 45m, "
                                   "90s or seconds, got 'soon'"),
        ("--hang-timeout", "-3", "Error: --hang-timeout must be SECONDS (≥ 0), auto or 0, got '-3'"),
        ("--max-restarts", "-1", "Error: --max-restarts must be ≥ 0, got -1"),
    ]:  # fmt: skip
        done = run_cli([*TINY, "--data", tiny_corpus, "--output", tmp_path / "run", flag, value])
        assert done.returncode == 2 and done.stderr.strip().splitlines() == [line], done.stderr
        assert not (tmp_path / "run").exists()


EXAMPLES = Path(__file__).parents[1] / "examples"


def _example_args(path: Path) -> list[str]:
    """The llama-train arguments an example runs: the srun line of the sbatch script (its shell
    variables left as words), or the container's args of the PaddleJob."""
    text = path.read_text()
    if path.suffix == ".sbatch":
        command = text.split("srun --kill-on-bad-exit=1 llama-train", 1)[1].replace("\\\n", " ")
        return shlex.split(command.split("\n", 1)[0])
    args = re.findall(r"^\s+- (--\S+)$", text.split("args:", 1)[1].split("ports:", 1)[0], re.M)
    return args


@pytest.mark.parametrize(
    "example, env, node",
    [
        ("slurm/train.sbatch", {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_NODEID": "1",
                                "SLURM_JOB_NODELIST": "localhost,gpu002",
                                "SLURM_GPUS_ON_NODE": "8"}, 1),
        ("k8s/paddlejob.yaml", {"PADDLE_MASTER": "localhost:37777", "PADDLE_NNODES": "2",
                                "PADDLE_RANK": "1"}, 1),
    ],
)  # fmt: skip
def test_the_examples_resolve_to_their_cluster(example, env, node):
    """Every option of the shipped examples is valid, and their strategy fits the two 8-GPU nodes
    the scheduler gives them."""
    from llama_train.cli import run_command
    from llama_train.options import resolve

    if example.endswith(".sbatch"):
        syntax = subprocess.run(["bash", "-n", str(EXAMPLES / example)], capture_output=True)
        assert syntax.returncode == 0, syntax.stderr
    args = _example_args(EXAMPLES / example)
    assert "--max-restarts" in " ".join(args) and "--resume" in " ".join(args)
    ctx = run_command.make_context("run", args)
    flags = {k: v for k, v in ctx.params.items() if k not in ("config_file", "print_config")}
    cfg = resolve({}, flags)
    from llama_model import Strategy

    world = Strategy.parse(cfg.parallel.strategy).world_size
    topology = resolve_topology(cfg.launch, world, env)
    assert (topology.nnodes, topology.node_rank, topology.nproc_per_node) == (2, node, 8)
    assert topology.master.startswith("127.0.0.1:")


def test_a_config_file_may_give_the_seconds_as_numbers(tmp_path):
    from llama_train.config_file import read_config_file
    from llama_train.options import resolve

    (tmp_path / "run.toml").write_text(
        "[resilience]\nhang_timeout = 600\nmax_duration = 5400.5\nmax_restarts = 3\n"
    )
    cfg = resolve(read_config_file(str(tmp_path / "run.toml")),
                  {"output": "out", "data": ("d",), "model_config": "tiny"})  # fmt: skip
    assert cfg.resilience.hang_timeout == "600" and cfg.resilience.max_duration == "5400.5"
    assert hang_timeout_s(cfg.resilience.hang_timeout) == 600
    (tmp_path / "bad.toml").write_text("[resilience]\nhang_timeout = true\n")
    with pytest.raises(TrainError, match=r"\[resilience\] hang_timeout must be a string, got True"):
        resolve(read_config_file(str(tmp_path / "bad.toml")), {})

"""The GPU path against float32 references (``pytest -m gpu`` / ``nox -s tests_gpu``; deselected
otherwise): sequence parallelism, ZeRO sharding, the pipeline schedules over NCCL's own p2p (pp4
and the interleaved VPP schedule; the CPU build carries them over its own sockets), the
compiled step and bf16 autocast, each trained with tests/dist_parity.py on the tiny config.

Every multi-GPU comparison runs at the largest of its 2/4/8-GPU layouts the machine holds and says
which (printed, and in the assertion messages). Without a CUDA build of Paddle, or with fewer than 2
GPUs, each test fails with one line saying so.

float32 bounds: as in the CPU layout tests, FACTORS times the float32 reduction-order floor measured
in the same session (one GPU, the batch in 8 micro-batches against 4; test_dist_parity.py explains
it); TF32 is switched off (NVIDIA_TF32_OVERRIDE=0) so that float32 means float32 in cuBLAS. The bf16
bound is derived, not yet measured on a GPU (see the test).
"""

import json
import math

import pytest
from test_dist_parity import FACTORS, Bounds, _differences, _merged, _records, _run

pytestmark = pytest.mark.gpu

FP32 = {"NVIDIA_TF32_OVERRIDE": "0"}

# comparison -> {GPUs: strategy}; the largest that fits the machine runs
LAYOUTS = {
    "sequence_parallel": {2: "mp2", 4: "dp2mp2", 8: "dp2mp2pp2"},
    "sharding": {2: "dp2", 4: "dp4", 8: "dp4mp2"},
    "pipeline": {2: "pp2", 4: "pp4", 8: "dp2pp4"},
    "vpp": {2: "pp2", 4: "pp4", 8: "dp2mp2pp2"},
    "to_static": {2: "mp2", 4: "dp2mp2", 8: "dp2mp2"},
}


def _gpus(needed: int = 2) -> int:
    import paddle

    if not paddle.is_compiled_with_cuda():
        pytest.fail(
            "GPU tests need a CUDA build of Paddle (paddlepaddle-gpu); this Paddle is CPU-only",
            pytrace=False,
        )
    count = paddle.device.cuda.device_count()
    if count < needed:
        pytest.fail(f"this GPU test needs {needed} GPUs; {count} visible", pytrace=False)
    return count


def _layout(kind: str) -> tuple[str, int, str]:
    gpus = _gpus()
    size = max(n for n in LAYOUTS[kind] if n <= gpus)
    strategy = LAYOUTS[kind][size]
    note = f"{kind}: {strategy} on {size} of {gpus} GPUs"
    if size < max(LAYOUTS[kind]):
        note += f" (the {max(LAYOUTS[kind])}-GPU layout needs more)"
    print(note)
    return strategy, size, note


@pytest.fixture(scope="module")
def bounds(tmp_path_factory):
    """FACTORS times the float32 floor on this GPU (one process, 8 micro-batches against 4), measured
    on first use: inside a test, after its GPU check, so that a CPU build fails the test in one line
    instead of erroring in a fixture."""
    measured: list[Bounds] = []

    def get() -> Bounds:
        if not measured:
            root = tmp_path_factory.mktemp("gpu-floor")
            runs = [
                _run(root / f"mb{mb}", 1, "--strategy", "dp1", "--micro-batches", str(mb), env=FP32)
                for mb in (4, 8)
            ]
            floor = _differences(*(_records(r) for r in runs), *(_model(r) for r in runs))
            print(f"float32 floor on this GPU: {floor}")
            measured.append(floor.times(FACTORS))
        return measured[0]

    return get


def _model(out) -> dict:
    # only the weights: a sharded optimizer's state is not saved (dist_parity.py)
    return {k: v for k, v in _merged(out / "ckpt").items() if k.startswith("model.")}


def _assert_same_training(out, ref, note: str, bounds) -> None:
    """Every rank's losses and gradient norms, and the final weights, within the measured bounds."""
    bounds = bounds()
    ranks = json.loads((out / "losses.json").read_text())["ranks"]
    for rank, records in enumerate(ranks):
        diff = _differences(records, _records(ref), _model(out), _model(ref))
        print(f"{note} rank {rank}: {diff}")
        assert diff.loss <= bounds.loss, (note, rank, diff, bounds)
        assert diff.grad_norm <= bounds.grad_norm, (note, rank, diff, bounds)
        assert diff.params <= bounds.params, (note, rank, diff, bounds)


def test_sequence_parallel_equals_plain_tensor_parallel(tmp_path, bounds):
    """SP moves the norms and residual adds to sequence shards (reduce-scatter / all-gather on mp):
    the same training as without it."""
    strategy, n, note = _layout("sequence_parallel")
    args = ("--strategy", strategy, "--micro-batches", "2")
    ref = _run(tmp_path / "tp", n, *args, env=FP32, gpus=True)
    out = _run(tmp_path / "sp", n, *args, "--sequence-parallel", env=FP32, gpus=True)
    _assert_same_training(out, ref, note, bounds)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_sharding_stage_equals_no_sharding(tmp_path, bounds, stage):
    """ZeRO 1/2/3 over dp (optimizer state, + gradients, + parameters) train as unsharded dp."""
    strategy, n, note = _layout("sharding")
    args = ("--strategy", strategy, "--micro-batches", "2")
    ref = _run(tmp_path / "stage0", n, *args, env=FP32, gpus=True)
    out = _run(tmp_path / f"stage{stage}", n, *args, "--sharding-stage", str(stage), env=FP32,
               gpus=True)  # fmt: skip
    _assert_same_training(out, ref, f"{note}, sharding stage {stage}", bounds)


def test_1f1b_over_nccl_equals_fthenb(tmp_path, bounds):
    """The two schedules exchange activations and gradients over NCCL p2p in different orders."""
    strategy, n, note = _layout("pipeline")
    args = ("--strategy", strategy, "--micro-batches", "4")
    ref = _run(tmp_path / "fthenb", n, *args, "--schedule", "FThenB", env=FP32, gpus=True)
    out = _run(tmp_path / "1f1b", n, *args, "--schedule", "1F1B", env=FP32, gpus=True)
    _assert_same_training(out, ref, note, bounds)


def test_vpp_equals_1f1b(tmp_path, bounds):
    """The interleaved schedule (two chunks per rank: r and r + pp) trains as 1F1B; 8 layers, so
    that pp4 has a layer per chunk. Over NCCL's asynchronous p2p (on CPU the store carries it)."""
    strategy, n, note = _layout("vpp")
    args = ("--strategy", strategy, "--micro-batches", "4", "--layers", "8")
    ref = _run(tmp_path / "1f1b", n, *args, "--schedule", "1F1B", env=FP32, gpus=True)
    out = _run(tmp_path / "vpp", n, *args, "--schedule", "VPP", "--virtual-pp-degree", "2",
               env=FP32, gpus=True)  # fmt: skip
    _assert_same_training(out, ref, f"{note}, VPP2", bounds)


def test_compiled_step_equals_eager_step(tmp_path, bounds):
    """dist.to_static under dp×mp (mp alone on 2 GPUs) against the eager step of the same layout."""
    strategy, n, note = _layout("to_static")
    args = ("--strategy", strategy, "--micro-batches", "1", "--vary-lr")
    ref = _run(tmp_path / "eager", n, *args, env=FP32, gpus=True)
    out = _run(tmp_path / "static", n, *args, "--static", env=FP32, gpus=True)
    _assert_same_training(out, ref, note, bounds)


def test_bf16_autocast_tracks_float32_over_20_steps(tmp_path):
    """bf16 autocast (O1: matmuls in bf16, parameters, norms and the loss in float32) against the
    float32 run of the same layout, one GPU, 20 steps.

    Bound: the relative rounding of bf16 is 2^-8 (0.4%); the tiny model's logits are O(1), so a
    step's loss (about 5.5 at the start) moves by about 1e-2 from rounding alone, and the updates
    (lr 1e-3, 20 steps) add to it. 3% of the float32 loss per step bounds that with margin and still
    fails on a real bug (a loss scaled wrongly, a broken cast); a run that silently stayed in
    float32 fails the other bound (some step must differ by more than 1e-4). The measured gap is
    printed: tighten the bound from it once measured.
    """
    _gpus(needed=1)
    args = ("--strategy", "dp1", "--steps", "20")
    ref = _run(tmp_path / "fp32", 1, *args, env=FP32, gpus=True)
    out = _run(tmp_path / "bf16", 1, *args, "--compute-dtype", "bfloat16", gpus=True)
    want = [r for r in _records(ref) if r["step"] != "eval"]
    got = [r for r in _records(out) if r["step"] != "eval"]
    assert len(got) == len(want) == 20
    gaps = [abs(g["loss"] - w["loss"]) for g, w in zip(got, want)]
    print(f"bf16 vs float32, max |loss gap| over 20 steps: {max(gaps):.3e}")
    assert all(math.isfinite(g["loss"]) for g in got)
    assert all(gap <= 0.03 * w["loss"] for gap, w in zip(gaps, want)), gaps
    assert max(gaps) > 1e-4, "the bf16 run matches float32 to 1e-4: autocast did not act"

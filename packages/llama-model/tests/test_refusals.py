"""What Paddle 3.3.1 cannot run on a CPU build is refused up front, in one line."""

import paddle
import pytest

from llama_model import LlamaModelError, ParallelModel, Strategy, preset
from llama_model.parallel import check_backend_support
from llama_model.static import check_static_supported

cpu_only = pytest.mark.skipif(paddle.is_compiled_with_cuda(), reason="CPU-build refusals")


@cpu_only
@pytest.mark.parametrize(
    ("strategy", "dtype", "message"),
    [
        (Strategy(), "bfloat16", "bfloat16 compute needs a GPU"),
        (Strategy(mp=2, sequence_parallel=True), "float32", "sequence_parallel needs a GPU"),
        (Strategy(dp=2, sharding_stage=2), "float32", "sharding_stage 2 needs a GPU"),
    ],
)
def test_gpu_only_paths_refuse_on_cpu(strategy, dtype, message):
    with pytest.raises(LlamaModelError) as err:
        ParallelModel.build(preset("tiny"), strategy, compute_dtype=dtype)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_same_options_pass_the_check_on_gpu():
    check_backend_support(
        Strategy(dp=2, mp=2, sequence_parallel=True, sharding_stage=1), "bfloat16", on_gpu=True
    )
    with pytest.raises(LlamaModelError, match="compute_dtype must be one of"):
        check_backend_support(Strategy(), "float16", on_gpu=True)


@pytest.mark.parametrize(
    ("strategy", "on_gpu", "message"),
    [
        (Strategy(dp=2, mp=2), False, "to_static with dp×mp needs a GPU"),
        (Strategy(pp=2), True, "does not support pp > 1"),
        (Strategy(dp=2, micro_batches=2), False, "use micro_batches=1"),
        (Strategy(mp=2, sequence_parallel=True), True, "does not compile sequence parallelism"),
    ],
)
def test_to_static_refusals(strategy, on_gpu, message):
    with pytest.raises(LlamaModelError, match=message):
        check_static_supported(strategy, on_gpu=on_gpu)


def test_to_static_bf16_needs_a_gpu():
    with pytest.raises(LlamaModelError, match="bfloat16 compute needs a GPU"):
        check_static_supported(Strategy(), on_gpu=False, compute_dtype="bfloat16")
    check_static_supported(Strategy(), on_gpu=True, compute_dtype="bfloat16")


def test_compiled_step_refuses_an_optimizer_with_its_own_clip():
    pm = ParallelModel.build(preset("tiny"), Strategy())
    opt = paddle.optimizer.AdamW(
        parameters=pm.parameters(), grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0)
    )
    with pytest.raises(LlamaModelError, match="give the optimizer no grad_clip"):
        pm.to_static(opt, 8, 32, clip_norm=1.0)


def test_to_static_allowed_layouts():
    for strategy in (Strategy(), Strategy(dp=4), Strategy(mp=2)):
        check_static_supported(strategy, on_gpu=False)
    check_static_supported(Strategy(dp=2, mp=2), on_gpu=True)


def test_world_size_mismatch_is_refused():
    with pytest.raises(LlamaModelError, match="needs 2 processes but the world size is 1"):
        ParallelModel.build(preset("tiny"), Strategy(dp=2))


@cpu_only
def test_gpu_suite_fails_in_one_line_per_test_without_a_gpu():
    """``pytest -m gpu`` on a CPU build: every GPU test fails (not skips) with the same one line, no
    traceback; a plain run deselects them all."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    suite = Path(__file__).parent / "test_gpu.py"
    cmd = [sys.executable, "-m", "pytest", str(suite), "-p", "no:cacheprovider", "-q", "-rf"]
    env = {**os.environ, "COLUMNS": "400"}  # the summary lines whole
    gpu = subprocess.run([*cmd, "-m", "gpu"], capture_output=True, text=True, timeout=120, env=env)
    assert gpu.returncode == 1, gpu.stdout[-2000:]
    failures = [line for line in gpu.stdout.splitlines() if line.startswith("FAILED ")]
    assert len(failures) == 8, gpu.stdout[-3000:]  # SP, sharding 1/2/3, pipeline, VPP, static, bf16
    line = "GPU tests need a CUDA build of Paddle (paddlepaddle-gpu); this Paddle is CPU-only"
    assert all(f.endswith(f" - Failed: {line}") for f in failures), failures
    assert "Traceback" not in gpu.stdout and "8 failed" in gpu.stdout
    plain = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 5 and "8 deselected" in plain.stdout, plain.stdout[-2000:]

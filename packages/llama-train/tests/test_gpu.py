"""A GPU job end to end (``pytest -m gpu`` / ``nox -s tests_gpu``; deselected otherwise): trained
and checkpointed through the CLI on GPUs, merged by llama-ckpt without Paddle, resumed under another
layout. Runs at the largest of its 2/4/8-GPU layouts the machine holds and says which; without a
CUDA build of Paddle or with fewer than 2 GPUs it fails with one line saying so."""

import numpy as np
import pytest
from conftest import TINY, losses, run_cli

from llama_ckpt import DistCheckpoint

pytestmark = pytest.mark.gpu

# GPUs -> (the layout that trains and saves, the one that resumes), with micro-batch sizes
LAYOUTS = {
    2: (["--strategy", "mp2", "--micro-batch-size", "4"], ["--strategy", "dp2", "--micro-batch-size", "2"]),
    4: (["--strategy", "dp2mp2", "--micro-batch-size", "2"], ["--strategy", "mp2pp2", "--micro-batch-size", "2"]),
    8: (["--strategy", "dp2mp2pp2", "--micro-batch-size", "2"], ["--strategy", "dp4mp2", "--micro-batch-size", "2"]),
}  # fmt: skip
COMMON = ["--max-steps", "8", "--global-batch-size", "8", "--keep-last", "0"]
FP32 = {"NVIDIA_TF32_OVERRIDE": "0"}  # float32 matmuls, not TF32: the 1e-5 bound is a float32 one


def _gpus() -> int:
    import paddle

    if not paddle.is_compiled_with_cuda():
        pytest.fail(
            "GPU tests need a CUDA build of Paddle (paddlepaddle-gpu); this Paddle is CPU-only",
            pytrace=False,
        )
    count = paddle.device.cuda.device_count()
    if count < 2:
        pytest.fail(f"this GPU test needs 2 GPUs; {count} visible", pytrace=False)
    return count


def test_gpu_checkpoint_merges_and_resumes_under_another_layout(tiny_corpus, tmp_path):
    gpus = _gpus()
    size = max(n for n in LAYOUTS if n <= gpus)
    save_layout, resume_layout = LAYOUTS[size]
    note = f"saved under {save_layout[1]}, resumed under {resume_layout[1]} ({size} of {gpus} GPUs)"
    print(note)
    a, b = tmp_path / "a", tmp_path / "b"
    result = run_cli([*TINY, *COMMON, "--data", tiny_corpus, "--output", a, *save_layout,
                      "--save-every", "4"], timeout=600, env=FP32)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # the job really ran on GPUs, with the kernels line of its first step
    assert "kernels: " in result.stdout

    # merged without Paddle's loader: every tensor equals Paddle's own merge of the GPU checkpoint
    import paddle.distributed as dist

    step8 = a / "checkpoints" / "step-00000008"
    ours = DistCheckpoint(str(step8), prefix="model")
    paddles = dist.load_merged_state_dict(str(step8))
    names = sorted(ours.names())
    assert names and names == sorted(
        k.removeprefix("model.") for k in paddles if k.startswith("model.")
    )
    for name in names:
        assert np.array_equal(ours.read(name), paddles["model." + name].numpy()), (note, name)

    result = run_cli([*TINY, *COMMON, "--data", tiny_corpus, "--output", b, *resume_layout,
                      "--resume", a / "checkpoints" / "step-00000004"], timeout=600, env=FP32)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "at step 4" in result.stdout
    ref, got = losses(a), losses(b)
    assert sorted(got) == [5, 6, 7, 8], note
    for step in range(5, 9):
        assert abs(got[step] - ref[step]) <= 1e-5, (note, step, got[step], ref[step])

"""The plan before a launch: on a GPU, a layout whose predicted memory does not fit is refused in
one line, before any process starts (``--no-plan-check`` launches anyway). On a CPU nothing is
refused: its ranks share the machine's memory with everything else it runs.

The front process learns its GPUs from ``nvidia-smi`` rather than from Paddle: asking Paddle for
a device's properties would create a CUDA context in this process, holding memory on the device
that rank 0 is about to use. The smallest GPU listed is the one planned for.
"""

from __future__ import annotations

import subprocess

from llama_train import test_hooks
from llama_train.errors import TrainError
from llama_train.plan.devices import MIB, Device, device


def detect_device() -> Device | None:
    """This machine's GPU (the smallest, if they differ), or None without one."""
    fake = test_hooks.fake_device()
    if fake is not None:  # NAME or NAME:GiB
        name, _, memory = fake.partition(":")
        return device(name, float(memory) if memory else None)
    import paddle

    if not paddle.is_compiled_with_cuda():
        return None
    query = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]
    try:
        listed = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in listed.stdout.splitlines():
        name, _, mib = line.rpartition(",")
        if name.strip() and mib.strip().isdigit():
            gpus.append((int(mib), name.strip()))
    if not gpus:
        return None
    mib, name = min(gpus)
    return Device(name, mib * MIB)  # the links play no part in what fits


def refuse_what_cannot_fit(record, config) -> None:
    """Raise TrainError naming the rank and its largest term when the run's layout does not fit
    this machine's GPU; nothing on a CPU or with --no-plan-check."""
    if not record.options.launch.plan_check:
        return
    gpu = detect_device()
    if gpu is None:
        return
    from llama_train.plan.estimate import make_plan
    from llama_train.plan.job import Job
    from llama_train.plan.report import refusal

    plan = make_plan(Job.of(record, config, gpu))
    if not plan.fits:
        raise TrainError(
            f"the plan does not fit: {refusal(plan, plan.largest_rank)} (llama-train plan with "
            "these options shows every term; --no-plan-check launches anyway)"
        )

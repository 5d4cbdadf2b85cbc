"""``llama-train plan``: the run's options (the same flags, the same one-line refusals), a device,
and what each rank will hold and how long a step will take; ``--strategy auto --devices N`` ranks
the layouts; ``--check`` measures the plan on this machine.

A plan reads no data and writes no run directory, so the two options a run requires for those,
``--output`` and ``--data``, are optional here: when neither the flags nor ``--config`` give them,
the options are resolved with placeholders (``PLACEHOLDERS``), which nothing reads. Every other
option goes through the run's own ``options.resolve``, ``model_setup.model_config`` and
``run_record.resolve``, so a plan refuses what a run refuses, in the same words.
"""

from __future__ import annotations

import json

import click

from llama_train.errors import TrainError
from llama_train.plan.devices import CPU, NAMES
from llama_train.plan.estimate import DEFAULT_MFU
from llama_train.plan.job import Job

# What --output and --data resolve to in a plan that was given neither (never read or written).
PLACEHOLDERS = {"output": "OUTPUT", "data": ("DATA",)}
AUTO = "auto"

PLAN_OPTIONS = (
    click.option("--device", default=None,
                 help=f"The device planned for: {', '.join(NAMES)} (`--device list` describes them); "
                      "another GPU with --device-memory."),
    click.option("--device-memory", type=float, default=None,
                 help="GiB of one device (another GPU, or less than the table's)."),
    click.option("--gpus-per-node", type=int, default=None, help="Devices per node [default: 8]."),
    click.option("--intra-node-bandwidth", type=float, default=None,
                 help="GB/s per device and direction within a node (default: the device's NVLink or PCIe)."),
    click.option("--inter-node-bandwidth", type=float, default=None,
                 help="GB/s per device and direction between nodes (default: the device's InfiniBand)."),
    click.option("--devices", type=int, default=None,
                 help="With --strategy auto: the devices to lay out (dp × mp × pp)."),
    click.option("--mfu", type=float, default=None,
                 help=f"Assumed model FLOPs utilisation of the step-time estimate [default: {DEFAULT_MFU}]."),
    click.option("--json", "as_json", is_flag=True, default=False, help="Print the plan as JSON."),
    click.option("--check", is_flag=True, default=False,
                 help="Train the layout here for two steps (small configs, CPU) and compare each "
                      "rank's measured bytes with the plan: states within 1%, activations within 10%."),
)  # fmt: skip


# the parameter names of PLAN_OPTIONS
PLAN_FLAGS = ("device", "device_memory", "gpus_per_node", "intra_node_bandwidth",
              "inter_node_bandwidth", "devices", "mfu", "as_json", "check")  # fmt: skip


def plan_options(command):
    """The plan's own flags, added to a command (the run's are added by cli's ``_with_run_options``)."""
    for option in reversed(PLAN_OPTIONS):
        command = option(command)
    return command


def run_plan(config_file: str | None, flags: dict, plan_flags: dict, echo=click.echo) -> int:
    """The ``plan`` command's work; raises TrainError with one line; returns the exit code."""
    from llama_train import model_setup, run_record
    from llama_train.config_file import read_config_file
    from llama_train.options import resolve

    if plan_flags["device"] and plan_flags["device"].lower() == "list":
        from llama_train.plan.devices import describe

        for line in describe():
            echo(line)
        return 0
    auto = flags.get("strategy") == AUTO
    devices = plan_flags["devices"]
    if auto and devices is None:
        raise TrainError("--strategy auto needs --devices N (the devices to lay out)")
    if devices is not None and not auto:
        raise TrainError("--devices goes with --strategy auto")
    if devices is not None and devices < 1:
        raise TrainError(f"--devices must be ≥ 1, got {devices}")
    if auto and plan_flags["check"]:
        raise TrainError("--check measures one layout: give --strategy, not auto")
    if auto:
        for name in ("sequence_parallel", "sharding_stage", "recompute"):
            if flags.get(name):
                raise TrainError(
                    f"--strategy auto tries every sharding stage, sequence parallelism and "
                    f"recompute itself: leave --{name.replace('_', '-')} out"
                )
    mfu = DEFAULT_MFU if plan_flags["mfu"] is None else plan_flags["mfu"]
    if not 0 < mfu <= 1:
        raise TrainError(f"--mfu must lie in (0, 1], got {mfu:g}")
    file_values = (
        read_config_file(config_file, say=lambda line: echo(line, err=True)) if config_file else {}
    )
    given = {**file_values, **{k: v for k, v in flags.items() if v not in (None, ())}}
    resolved_flags = dict(flags)
    if auto:  # resolved as one process; the schedule asked is applied to each layout tried
        schedule = (given.get("pp_schedule", "1F1B"), given.get("virtual_pp_degree", 1))
        resolved_flags.update(strategy="dp1", pp_schedule="1F1B", virtual_pp_degree=1)
    for name, placeholder in PLACEHOLDERS.items():
        if name not in given:
            resolved_flags[name] = placeholder
    cfg = resolve(file_values, resolved_flags)
    config = model_setup.model_config(cfg.model)
    record = run_record.resolve(cfg, config)
    dev = _device(plan_flags)
    job = Job.of(record, config, dev)
    check_runs_on(job, record, config)  # under auto: the compute dtype (the layout is dp1 here)
    model_name = cfg.model.model_config or cfg.model.init_from
    peak = cfg.logging.peak_tflops
    if plan_flags["check"]:
        from llama_train.plan.check import run_check

        return run_check(cfg, job, model_name, plan_flags["as_json"], echo)
    if auto:
        ranking_of = (devices, schedule, mfu, peak)
        return _auto(job, ranking_of, cfg, model_name, given, plan_flags["as_json"], echo)
    from llama_train.plan.estimate import make_plan
    from llama_train.plan.report import plan_lines

    plan = make_plan(job, mfu, peak)
    if plan_flags["as_json"]:
        echo(json.dumps({"model": model_name, **plan.to_json()}, indent=2))
    else:
        for line in plan_lines(plan, model_name):
            echo(line)
    return 0


def _device(plan_flags: dict):
    """--device with its overrides; for --check without one, this machine's."""
    from llama_train.plan.devices import device

    name = plan_flags["device"]
    if name is None and plan_flags["check"]:
        from llama_train.plan.prelaunch import detect_device

        here = detect_device()
        name = CPU if here is None else here.name
        if here is not None and plan_flags["device_memory"] is None:
            return here
    if name is None:
        raise TrainError(f"missing option --device (one of {', '.join(NAMES)}, or list)")
    return device(name, plan_flags["device_memory"], plan_flags["intra_node_bandwidth"],
                  plan_flags["inter_node_bandwidth"], plan_flags["gpus_per_node"])  # fmt: skip


def check_runs_on(job, record, config) -> None:
    """What the device cannot run, in the run's own words: on a CPU everything the run checks
    before launch (Paddle's CPU build has no bf16 training, no reduce-scatter); on a GPU the
    layout against the model and the batch, and bf16 on a part without it."""
    from llama_model import LlamaModelError

    if not job.device.gpu:
        from llama_train.model_setup import check_layout

        check_layout(record, config)
        return
    try:
        job.strategy.validate(config, global_batch=record.batch_size)
    except LlamaModelError as exc:
        raise TrainError(str(exc)) from None
    if job.device.peak_flops(job.compute_dtype) is None and job.device.name in NAMES:
        raise TrainError(f"--amp bf16: the {job.device.name} has no bfloat16 compute")


def _auto(base, ranking_of, cfg, model_name, given, as_json, echo) -> int:
    from llama_train.plan.report import TOP, command_line, ranking_lines
    from llama_train.plan.search import rank_layouts

    devices, schedule, mfu, peak = ranking_of
    training = cfg.training
    global_batch = training.global_batch_size or (
        training.micro_batch_size * devices * (training.grad_accum or 1)
    )
    ranking = rank_layouts(base, devices, global_batch, schedule, mfu, peak)
    if as_json:
        top = ranking.best[:TOP]
        echo(json.dumps({
            "model": model_name, "devices": devices, "considered": ranking.considered,
            "fitting": ranking.fitting, "layouts": [plan.to_json() for plan in top],
            "best_command": command_line(top[0].job, given) if top else None,
        }, indent=2))  # fmt: skip
    else:
        for line in ranking_lines(ranking, base, devices, global_batch, model_name, given):
            echo(line)
    return 0

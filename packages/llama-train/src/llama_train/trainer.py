"""The training loop: one optimizer step per global batch, with logging, evaluation and checkpoints.

Per step ``k`` (counted from 1): seed the random generators from (seed, k), set the learning rate
of step k, read the global batch at the consumed-sample position, forward + backward over the
micro-batches and stages, clip by the global gradient norm and update (``steps``: eager or
compiled), stop on a non-finite loss or norm with nothing saved, then log / evaluate / save as the
cadences say, and stop (saving) when the ranks agree that a signal arrived or that the wall-clock
limit leaves no time for another step (``preemption``). Each phase is reported to the front
process's hang detection (``hangwatch``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from llama_train import hangwatch, memory, preemption, supervise, test_hooks
from llama_train.checkpoint import CheckpointManager, TrainerState
from llama_train.metrics import (
    FLOPS_FORMULA,
    flops_per_token,
    format_eval,
    format_step,
    model_flops_utilisation,
)
from llama_train.profiling import StepProfiler
from llama_train.schedule import LRSchedule


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


@dataclass
class _Window:
    """Throughput over the steps since the last log line."""

    steps: int = 0
    seconds: float = 0.0

    def add(self, seconds: float) -> None:
        self.steps += 1
        self.seconds += seconds

    def reset(self) -> None:
        self.steps, self.seconds = 0, 0.0


class Trainer:
    def __init__(
        self,
        run,
        pm,
        step_fn,
        data,
        ckpt: CheckpointManager,
        state: TrainerState,
        *,
        console=None,
        metrics=None,
        stop=None,
        peak_tflops=None,
        progress=None,
    ):
        self.run_record = run  # llama_train.run_record.RunRecord
        self.pm = pm
        self.step_fn = step_fn  # steps.EagerStep or steps.CompiledStep
        self.data = data
        self.ckpt = ckpt
        self.state = state
        self.console = console  # rank 0 only
        self.metrics = metrics  # reporting.Reporter, rank 0 only
        self.stop = stop
        self.schedule = LRSchedule.of_run(run)
        self.flops_per_token = flops_per_token(pm.config, run.seq_len)
        self.peak_tflops = peak_tflops
        self.world = pm.strategy.world_size
        self.stopped_by_signal = False
        self.stopped_at_deadline = False
        self.last_step_s = 0.0  # the last step's time, recorded with each save's (orphan grace)
        # the last save's time: this run's, else the one recorded in the run directory
        self.last_save_s = supervise.measured_save_s(Path(run.output) / "logs")
        # where this rank is, for the front's hang detection (hangwatch.ProgressReport)
        self.progress = progress or hangwatch.NoProgress()

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.line(text)

    # ------------------------------------------------------------------------------- the loop
    def run(self) -> TrainerState:
        import paddle

        from llama_model import kernels

        run, state = self.run_record, self.state
        opts = run.options
        mfu_note = (
            f"peak {self.peak_tflops} TFLOP/s per device"
            if self.peak_tflops
            else "no peak known (set --peak-tflops)"
        )
        self.say(
            f"model FLOPs per token = {FLOPS_FORMULA} = {self.flops_per_token:,.0f}; MFU: {mfu_note}"
        )
        params, moments = memory.state_bytes(self.pm, run.strategy.sharding_stage)
        largest = [max(r) for r in zip(*memory.gather([params, moments], self.pm.distributed))]
        self.say(
            f"memory per rank (largest): parameters {largest[0] / memory.GIB:.3f} GiB, AdamW state "
            f"{largest[1] / memory.GIB:.3f} GiB (float32 moments)"
        )
        window = _Window()
        first_step = state.step + 1
        kernels.reset_usage()
        profile_steps, max_steps = opts.profiling.profile_steps, opts.training.max_steps
        profiler = StepProfiler(profile_steps, run.output, self.pm.rank, memory.on_gpu())
        log_every, eval_every = opts.logging.log_every, opts.eval.eval_every
        save_every = opts.checkpoint.save_every
        while state.step < max_steps:
            step = state.step + 1
            paddle.seed(step_seed(opts.training.seed, step))
            lr = self.schedule(step)
            self.step_fn.set_lr(lr)
            input_ids, labels = self.data.batch(state.consumed_samples)
            self.progress("step", step, step - 1)
            test_hooks.maybe_raise(step, self.pm.rank, run)
            profiler.before_step(step)
            start = time.perf_counter()
            loss, norm = self.step_fn.run(step, input_ids, labels)
            self.last_step_s = time.perf_counter() - start
            self.progress.step_s = self.last_step_s
            window.add(self.last_step_s)
            table = profiler.after_step(step)
            if table:
                self.say(f"profile: steps {profile_steps}, traces in {profiler.directory}")
                for line in table:
                    self.say(f"profile: {line}")
            if step == first_step:  # what this run's kernels really did, from their call counters
                self.say(f"kernels: {kernels.usage_summary()}")
            state.step = step
            state.consumed_samples += run.batch_size
            state.loss = loss
            if step % log_every == 0 or step == max_steps:
                self._log(step, loss, lr, norm, window)
                window.reset()
            if eval_every and step % eval_every == 0:
                self.progress("eval", step, step)
                start = time.perf_counter()
                self.evaluate(step)
                self.progress.eval_s = time.perf_counter() - start
            stopping = 0
            if self.stop is not None and step < max_steps:
                stopping = self.stop.agreed(self.last_step_s, self.last_save_s)
            if stopping or step == max_steps or (save_every and step % save_every == 0):
                self.progress("save", step, step)
                path = self.save()
                self.say(f"saved checkpoint {path}")
            if stopping:
                self.stopped_by_signal = True
                self.stopped_at_deadline = stopping == preemption.AT_DEADLINE
                why = "at the wall-clock limit" if self.stopped_at_deadline else "by a signal"
                self.say(f"stopped {why} after step {step}; resume with --resume auto")
                break
        self.progress("done", state.step, state.step)
        return state

    def _log(self, step: int, loss: float, lr: float, norm: float, window: _Window) -> None:
        peaks = memory.peak_record(self.pm.distributed)  # a collective: every rank takes part
        if self.metrics is None and self.console is None:
            return
        step_time = window.seconds / max(window.steps, 1)
        tokens_per_s = self.run_record.tokens_per_step / step_time if step_time > 0 else 0.0
        mfu = None
        if self.peak_tflops:
            mfu = model_flops_utilisation(
                tokens_per_s, self.flops_per_token, self.world, self.peak_tflops
            )
        record = {
            "step": step,
            "split": "train",
            "loss": loss,
            "lr": lr,
            "grad_norm": norm,
            "consumed_samples": self.state.consumed_samples,
            "tokens": self.state.consumed_samples * self.run_record.seq_len,
            "step_time_s": step_time,
            "tokens_per_s": tokens_per_s,
            "tokens_per_s_per_device": tokens_per_s / self.world,
            "model_tflops_per_device": tokens_per_s * self.flops_per_token / self.world / 1e12,
            "mfu": mfu,
            **peaks,
            "time": time.time(),
        }
        if self.metrics is not None:
            self.metrics.write(record)
        self.say(format_step(record, self.run_record.options.training.max_steps))

    # ---------------------------------------------------------------------------- evaluation
    def evaluate(self, step: int) -> float:
        """Mean token loss over the valid batches: forward passes only, no gradients (through the
        pipeline's own evaluation schedule when pp > 1)."""
        total, count = 0.0, 0
        for input_ids, labels in self.data.valid_batches():
            total += self.step_fn.evaluate(input_ids, labels)
            count += 1
        loss = total / count
        record = {
            "step": step,
            "split": "valid",
            "valid_loss": loss,
            "valid_ppl": math.exp(min(loss, 700.0)),
            "time": time.time(),
        }
        if self.metrics is not None:
            self.metrics.write(record)
        self.say(format_eval(record))
        return loss

    # ---------------------------------------------------------------------------- checkpoints
    def save(self):
        """Save the step; rank 0 records how long the save and the step took (``logs/timing.json``:
        what the launcher's watchdog gives a stop once the front process is gone)."""
        again = self.state.step in self.ckpt.published
        start = time.perf_counter()
        path = self.ckpt.save(self.state, self.step_fn.checkpoint_tensors())
        seconds = time.perf_counter() - start
        if not again:
            self.last_save_s = seconds
            self.progress.save_s = seconds
        if self.pm.rank == 0 and not again:
            logs = Path(self.run_record.output) / "logs"
            supervise.write_timing(logs, seconds, self.last_step_s, self.state.step)
        return path

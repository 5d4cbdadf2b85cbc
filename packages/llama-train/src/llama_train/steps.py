"""The training step behind one interface: eager (``ParallelModel``) or compiled (``--to-static``).

Both run forward, backward, global-norm clipping and the AdamW update of one global batch, report
the loss and the gradient norm before clipping, evaluate forward-only, and expose the same
checkpoint tensors (``model.<param name>``, ``optimizer.<param name>.<accumulator>``), so a
checkpoint written by one resumes under the other, and under another layout.

The one difference a user sees: the eager step checks the loss and the norm before it updates the
weights; the compiled step updates inside the program and the check comes after. Either way a
non-finite value stops the job with nothing saved, so the last checkpoint stays clean.
"""

from __future__ import annotations

import math

from llama_model import read_floats
from llama_train import optimizer as optim
from llama_train.checkpoint import MODEL_PREFIX
from llama_train.errors import NonFiniteLoss


def _check_finite(step: int, loss: float, norm: float) -> None:
    if not math.isfinite(loss):
        raise NonFiniteLoss(step, loss)
    if not math.isfinite(norm):
        raise NonFiniteLoss(step, norm, "gradient norm")


class EagerStep:
    compiled = False

    def __init__(self, pm, opt, clip_grad: float):
        self.pm, self.opt, self.clip_grad = pm, pm.shard_optimizer(opt), clip_grad

    def set_lr(self, lr: float) -> None:
        optim.set_lr(self.opt, lr)

    def run(self, step: int, input_ids, labels) -> tuple[float, float]:
        # The loss and the norm stay on the device until one read of both (the step's one host
        # sync, needed anyway: a non-finite value must stop the job before the update).
        loss = self.pm.forward_backward_tensor(input_ids, labels)
        if self.clip_grad > 0:
            norm = self.pm.clip_grad_norm_tensor(self.clip_grad)
        else:
            norm = self.pm.grad_norm_tensor()
        loss, norm = read_floats(loss, norm)
        _check_finite(step, loss, norm)
        self.opt.step()
        self.opt.clear_grad()
        return loss, norm

    def evaluate(self, input_ids, labels) -> float:
        return self.pm.evaluate(input_ids, labels)

    def checkpoint_tensors(self, for_loading: bool = False) -> dict:
        """This rank's share of the checkpoint; ``for_loading`` first creates AdamW's accumulators
        (Paddle makes them lazily at the first update) so that a load can fill them in place."""
        if for_loading:
            optim.ensure_state(self.pm, self.opt)
        tensors = self.pm.state_dict(prefix=MODEL_PREFIX)
        tensors.update(optim.state_dict(self.pm, self.opt))
        return tensors

    def loaded(self, tensors: dict) -> None:
        """The tensors of ``checkpoint_tensors`` were filled in place: nothing more to do."""


class CompiledStep:
    """``ParallelModel.to_static``: one program per step, the global batch as one micro-batch."""

    compiled = True

    def __init__(self, pm, opt, clip_grad: float, batch: int, seq: int):
        self.pm = pm
        self.static = pm.to_static(opt, batch, seq, clip_norm=clip_grad)
        self._eager_is_current = False

    def set_lr(self, lr: float) -> None:
        self.static.set_lr(lr)

    def run(self, step: int, input_ids, labels) -> tuple[float, float]:
        loss = self.static(input_ids, labels)
        self._eager_is_current = False
        _check_finite(step, loss, self.static.grad_norm)
        return loss, self.static.grad_norm

    def evaluate(self, input_ids, labels) -> float:
        # The eager module evaluates (any batch shape, the pipeline's own evaluation), on the
        # compiled program's current weights.
        if not self._eager_is_current:
            self.static.sync_module()
            self._eager_is_current = True
        return self.pm.evaluate(input_ids, labels)

    def checkpoint_tensors(self, for_loading: bool = False) -> dict:
        tensors = self.static.state_dict(prefix=MODEL_PREFIX)
        tensors.update(self.static.optimizer_state_dict(prefix=optim.OPTIMIZER_PREFIX))
        return tensors

    def loaded(self, tensors: dict) -> None:
        """Hand the filled tensors to the program (``DistModel`` gives copies, not its variables)."""
        params = {
            k.removeprefix(MODEL_PREFIX): v
            for k, v in tensors.items()
            if k.startswith(MODEL_PREFIX)
        }
        opt_state = {
            k.removeprefix(optim.OPTIMIZER_PREFIX): v
            for k, v in tensors.items()
            if k.startswith(optim.OPTIMIZER_PREFIX)
        }
        self.static.set_state_dict(params, opt_state)
        self._eager_is_current = False


def build_step(run, pm, opt):
    """The step a ``RunRecord`` asks for (--to-static: compiled), clipping at --clip-grad."""
    clip = run.options.optimizer.clip_grad
    if run.options.training.to_static:
        return CompiledStep(pm, opt, clip, run.batch_size, run.seq_len)
    from llama_train.plan.measure import measured

    return measured(EagerStep(pm, opt, clip))  # `plan --check`: inert unless its variable is set

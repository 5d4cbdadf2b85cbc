"""AdamW for a ParallelModel, and its state under names that survive a change of layout.

Paddle keys optimizer state by the parameter's automatic name (``linear_3.w_0``), which depends on
how many layers a rank happened to build, and ``dist.shard_optimizer`` adds its own spelling
(``…dist_moment1_0``): a checkpoint keyed that way cannot move from dp2mp2pp2 to mp2. Here every
accumulator is keyed by the parameter's full-model name instead:
``optimizer.<param name>.<accumulator>`` (``moment1``, ``moment2``, ``beta1_pow_acc``,
``beta2_pow_acc``), with the same placements as the parameter (moments) or replicated (beta
powers), so ``dist.load_state_dict`` reshards them like the weights.
"""

from __future__ import annotations

from llama_model import ParallelModel
from llama_model.paddle_compat import optimizer as compat_optimizer
from llama_train.options import Optimizer

OPTIMIZER_PREFIX = "optimizer."


def no_decay(name: str) -> bool:
    """Norm weights take no weight decay (as in the upstream recipe's trainer)."""
    return name.endswith("norm.weight")


def build_optimizer(pm: ParallelModel, cfg: Optimizer):
    """AdamW over this rank's parameters (the eager step wraps it with ``pm.shard_optimizer``; the
    compiled step hands it to ``dist.to_static`` as it is)."""
    import paddle

    decayed = {p.name for n, p in pm.named_parameters() if not no_decay(n)}
    return paddle.optimizer.AdamW(
        learning_rate=cfg.lr,
        beta1=cfg.adam_beta1,
        beta2=cfg.adam_beta2,
        epsilon=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
        # Distributed parameters are named "<automatic name>.dist", and a compiled program adds that
        # suffix to a one-process model's names too.
        apply_decay_param_fun=lambda name: name in decayed or name.removesuffix(".dist") in decayed,
        parameters=pm.parameters(),
    )


def set_lr(opt, lr: float) -> None:
    compat_optimizer.inner(opt).set_lr(lr)


def ensure_state(pm: ParallelModel, opt) -> None:
    """Create (and place) every accumulator, so a checkpoint can be loaded into it: one update with
    zero gradients at lr 0, which leaves the weights unchanged (the loaded state replaces the rest)."""
    import paddle

    if compat_optimizer.accumulators(opt):
        return
    saved_lr = compat_optimizer.inner(opt).get_lr()
    for _, p in pm.named_parameters():
        p.grad = paddle.zeros_like(p)
    set_lr(opt, 0.0)
    opt.step()
    opt.clear_grad(set_to_zero=False)
    set_lr(opt, saved_lr)


def state_dict(pm: ParallelModel, opt) -> dict:
    """This rank's accumulators under ``optimizer.<param name>.<accumulator>``."""
    names = {p.name: n for n, p in pm.named_parameters()}
    out = {}
    for acc_name, per_param in compat_optimizer.accumulators(opt).items():
        for auto_name, tensor in per_param.items():
            if auto_name in names:
                out[f"{OPTIMIZER_PREFIX}{names[auto_name]}.{acc_name}"] = tensor
    return out

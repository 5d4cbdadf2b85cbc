"""The dist-to-static model (``dist.to_static``) as the compiled training step uses it: its main
program, a value fetched every run, its place, its parameter names, a value kept by name, and the
gradient clip its optimizer applies. Verified for Paddle 3.3 (PIR programs)."""

from __future__ import annotations

VERIFIED_FOR = ("3.3",)


def main_program(dist_model):
    return dist_model._engine.main_program


def fetch_every_run(dist_model, value, name: str) -> None:
    """Fetch the program value ``value`` on every run, as ``dist_model.outs[name]``."""
    dist_model._fetch_value(value, name)


def place(dist_model):
    return dist_model._engine._place


def structured_names(dist_model) -> dict:
    """The program's parameter names -> the module's (``llama.layers.0...``)."""
    return dict(dist_model._parameter_to_structured_name)


def keep_by_name(value, name: str) -> None:
    """Inside a program being built: keep ``value`` as the persistable variable ``name``."""
    import paddle

    paddle._C_ops.set_persistable_value(value, name)


def grad_clip_of(optimizer):
    return getattr(optimizer, "_grad_clip", None)


def set_grad_clip(optimizer, clip) -> None:
    """The clip the compiled program applies to the gradients (``to_static`` reads the optimizer's
    own; there is no public setter)."""
    optimizer._grad_clip = clip

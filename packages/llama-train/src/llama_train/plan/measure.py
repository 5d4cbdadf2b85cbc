"""What a rank really holds in a training step, for ``llama-train plan --check`` (rank side).

With ``LLAMA_TRAIN_RECORD_MEMORY=DIR`` set, ``steps.build_step`` hands the eager step to
:func:`measured`, and each rank writes ``DIR/rank-R.json`` after its second step (``MEASURED_RUN``):

* ``parameters``: the elements and bytes of its parameter shards (``ParallelModel.local_size``);
* ``gradients``: the bytes of the local gradients, read once every micro-batch's backward is done;
* ``optimizer``: the bytes of every optimizer accumulator (AdamW's moments and beta powers), read
  just after it;
* ``activations``: the bytes of the tensors saved for backward during the step's forward passes,
  divided by the step's micro-batches.

Saved tensors are seen through ``paddle.autograd.saved_tensors_hooks`` (it sees dist tensors too:
their local shard is counted). Each storage counts once: the pack hook keeps a reference to every
tensor it sees until the step ends, so no storage is freed and reused within the step, and the
tensors are told apart by their data pointer (q, k and v's matmuls save one norm output, once).
Parameters and buffers that an operator saves are not activations and are left out.

Recomputed blocks: Paddle 3.3.1 allows one pair of hooks at a time, its non-reentrant recompute
registers its own for the block, and leaving it resets every hook (``__exit__`` does not restore
an outer pair). So this module moves its pair out of the way of each recomputed block and back
(see ``_watching``). What a recomputed block keeps is its arguments (the layer's input and the
rotary tables, held by the recompute's closure), counted from the decoder layer's call.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

RECORD_MEMORY_ENV = "LLAMA_TRAIN_RECORD_MEMORY"
# The second step: the first one's pipeline stages also run a forward to learn the shapes they
# exchange (Paddle's ``_shape_inference``), which would count as one more micro-batch.
MEASURED_RUN = 2


def measured(step):
    """``step`` itself, or, with ``LLAMA_TRAIN_RECORD_MEMORY`` set and an eager step, the step
    that measures its second run."""
    directory = os.environ.get(RECORD_MEMORY_ENV)
    if not directory or step.compiled:
        return step
    return MeasuredStep(step, Path(directory))


def _local_bytes(tensor) -> tuple[int, int] | None:
    """(data pointer, bytes) of a tensor's local storage; None for one without storage here."""
    from llama_model.paddle_compat.tensors import local_value

    try:
        local = local_value(tensor)
        elements = 1
        for size in local.shape:
            elements *= int(size)
        if elements == 0:
            return None
        return int(local.data_ptr()), elements * local.element_size()
    except (RuntimeError, ValueError):  # a dist tensor with no shard on this rank
        return None


class _SavedTensors:
    """The storages saved for backward while active, each once (see the module docstring)."""

    def __init__(self, excluded: set[int]):
        self.excluded = excluded
        self.storages: dict[int, int] = {}
        self.shapes: dict[int, str] = {}  # the first tensor seen on each storage, as it was shaped
        self.kept: list = []  # every tensor seen, alive until the step ends

    def note(self, tensor) -> None:
        seen = _local_bytes(tensor)
        if seen is None or seen[0] in self.excluded:
            return
        self.kept.append(tensor)
        pointer, nbytes = seen
        if pointer not in self.storages:
            self.shapes[pointer] = f"{list(tensor.shape)} {str(tensor.dtype).split('.')[-1]}"
        self.storages[pointer] = max(self.storages.get(pointer, 0), nbytes)

    def pack(self, tensor):
        self.note(tensor)
        return tensor

    @staticmethod
    def unpack(tensor):
        return tensor

    @property
    def total(self) -> int:
        return sum(self.storages.values())

    def by_shape(self) -> list[list]:
        """[shape and dtype, storages, bytes] per distinct (global) shape, largest bytes first:
        what a prediction that misses can be compared with."""
        rows: dict[str, list] = {}
        for pointer, nbytes in self.storages.items():
            row = rows.setdefault(self.shapes[pointer], [self.shapes[pointer], 0, 0])
            row[1] += 1
            row[2] += nbytes
        return sorted(rows.values(), key=lambda row: -row[2])


@contextlib.contextmanager
def _watching(module, saved: _SavedTensors):
    """Saved tensors of ``module``'s forward passes go to ``saved`` while the block runs.

    Paddle allows one pair of hooks at a time, and a recomputed block registers its own: in the
    forward when it runs the block without keeping anything, in the backward when it runs it
    again. So, with recompute on, this pair is taken out as a decoder layer starts (after noting
    the arguments the recompute keeps), put back as soon as the block is left (after the layer,
    or before the MLP half for "attention"), and taken out when the backward reaches a layer's
    output (a gradient hook), before it recomputes anything."""
    import paddle

    hooks = paddle.autograd.saved_tensors_hooks(saved.pack, saved.unpack)
    granularity = getattr(module, "recompute_granularity", None)

    def clear(*_):
        hooks.__exit__()  # resets whichever pair is registered (none, or this one)

    def again(*_):
        clear()
        hooks.__enter__()

    def layer_starts(layer, inputs):
        if granularity is None:
            return
        for tensor in inputs:  # what the recompute keeps: its block's arguments
            if isinstance(tensor, paddle.Tensor):
                saved.note(tensor)
        clear()  # the recompute registers its own pair for its block

    def layer_ends(layer, inputs, output):
        again()
        if granularity is not None and not output.stop_gradient:
            output.register_hook(clear)  # the backward reaches this layer: it will recompute

    handles = []
    llama = module.llama
    outside = [llama.embed_tokens, llama.norm, module.lm_head]
    for layer in llama.layers.values():
        handles.append(layer.register_forward_pre_hook(layer_starts))
        handles.append(layer.register_forward_post_hook(layer_ends))
        if granularity == "attention":  # the MLP half runs outside the recomputed block
            outside.append(layer.post_attention_layernorm)
    handles += [m.register_forward_pre_hook(again) for m in outside if m is not None]
    hooks.__enter__()
    try:
        yield
    finally:
        clear()
        for handle in handles:
            handle.remove()


class MeasuredStep:
    """An eager step whose second run is measured (see the module docstring); otherwise the step."""

    def __init__(self, step, directory: Path):
        self.step = step
        self.directory = directory
        self.runs = 0

    def __getattr__(self, name):
        return getattr(self.step, name)

    def run(self, step: int, input_ids, labels):
        self.runs += 1
        if self.runs != MEASURED_RUN:
            return self.step.run(step, input_ids, labels)
        pm = self.step.pm
        excluded = {
            s[0] for t in [*pm.parameters(), *pm.module.buffers()] if (s := _local_bytes(t))
        }
        saved = _SavedTensors(excluded)
        plain_forward_backward = pm.forward_backward_tensor
        gradients = 0

        def watched_forward_backward(*args):
            nonlocal gradients
            with _watching(pm.module, saved):
                loss = plain_forward_backward(*args)
            # every micro-batch's gradient is in: what the optimizer will read
            gradients = _total([p.grad for p in pm.parameters() if p.grad is not None])
            return loss

        # an instance attribute for this one run, shadowing the method the step calls
        pm.forward_backward_tensor = watched_forward_backward
        try:
            result = self.step.run(step, input_ids, labels)
        finally:
            del pm.forward_backward_tensor
        # AdamW made its accumulators in the update
        from llama_model.paddle_compat import optimizer as compat_optimizer

        accumulators = compat_optimizer.accumulators(self.step.opt)
        elements, param_bytes = pm.local_size()
        record = {
            "rank": pm.rank,
            "coordinates": {
                "pp": pm.layout.stage,
                "dp": pm.layout.dp_rank,
                "mp": pm.layout.mp_rank,
            },
            "parameters": elements,
            "bytes": {
                "parameters": param_bytes,
                "gradients": gradients,
                # AdamW's moments and beta powers; the parameters are float32 (also under --amp
                # bf16), so there are no master weights
                "optimizer": _total(t for per in accumulators.values() for t in per.values()),
                "activations": saved.total // pm.strategy.micro_batches,
            },
            "saved_tensors": saved.by_shape(),
        }
        from llama_ckpt.atomic import write_atomic

        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.directory / f"rank-{pm.rank}.json", json.dumps(record) + "\n")
        return result


def _total(tensors) -> int:
    storages = {}
    for tensor in tensors:
        seen = _local_bytes(tensor)
        if seen is not None:
            storages[seen[0]] = seen[1]
    return sum(storages.values())

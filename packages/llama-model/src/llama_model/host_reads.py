"""Counting the reads of tensor values into Python: each one waits for the device on a GPU, so a
training step should do as few as it can (llama-train's eager step does one).

    with count_host_reads() as reads:
        run_one_step()
    assert reads == ["numpy"]

A diagnostic for tests and for checking a training loop, not for production: it replaces the
Tensor methods that read values (Paddle's own calls included) for the duration of the block, in
the whole process.
"""

from __future__ import annotations

import contextlib

from llama_model._paddle import paddle

READ_METHODS = ("numpy", "item", "tolist", "__float__", "__int__", "__bool__")


@contextlib.contextmanager
def count_host_reads():
    """Yields a list that receives the method name of every tensor read inside the block."""
    reads: list[str] = []
    originals = {name: getattr(paddle.Tensor, name) for name in READ_METHODS}

    def counting(name):
        original = originals[name]

        def read(self, *args, **kwargs):
            reads.append(name)
            return original(self, *args, **kwargs)

        return read

    try:
        for name in READ_METHODS:
            setattr(paddle.Tensor, name, counting(name))
        yield reads
    finally:
        for name, method in originals.items():
            setattr(paddle.Tensor, name, method)

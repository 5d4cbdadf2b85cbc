"""Every use of Paddle's internals in the project, behind named adapters, one module per concern.

Upgrading Paddle means reading this folder. Each module names the Paddle series it was verified
against (``VERIFIED_FOR``); :func:`check_paddle_version` refuses, in one line naming the modules, a
Paddle outside them before the parallel stack or the launcher relies on any of them (set
``LLAMA_MODEL_UNVERIFIED_PADDLE=1`` to try anyway). Re-verify a module, then add the series to it.

* ``gloo``: workarounds for Paddle defects met when auto-parallel runs on CPU over gloo (process
  mesh and numpy 2.4, p2p ordering and the socket transport, static process groups, ``Tensor.cuda``
  inside checkpoint loading); applied only on gloo, each pinned by a test of the defect.
* ``tensors``: a dist tensor's local shard, a layer's parameter and buffer slots, sharing storage.
* ``pipelining``: the pipelining schedules' micro-batch split, last-stage outputs, forward-only runs.
* ``static_engine``: the dist-to-static model's program, fetches, place and shared variables, and
  the gradient clip the static optimizer takes.
* ``launch``: Paddle's launcher's stop signal handling and its rank start (llama-train).
* ``optimizer``: an optimizer's accumulators (llama-train reads and reshards AdamW's moments).
* ``kernels``: Paddle's own fused kernels a build may lack for a device (``fused_rms_norm`` on CPU).
* ``settings``: the CPU math threads (llama-infer) and the logger of Paddle's distributed modules
  (llama-train quiets its checkpoint writer).

llama-ops keeps its one internal (``paddle._C_ops._run_custom_op``, its custom-op call) itself: it
depends on nothing of the project. The gloo patches in force are listed in llama-train's start-up
line (:func:`applied`).
"""

from __future__ import annotations

import os

from llama_model.errors import LlamaModelError

UNVERIFIED_ENV = "LLAMA_MODEL_UNVERIFIED_PADDLE"
# The adapter modules, each declaring the Paddle series it was verified for (``VERIFIED_FOR``).
ADAPTERS = ("gloo", "kernels", "launch", "optimizer", "pipelining", "settings", "static_engine",
            "tensors")  # fmt: skip


def paddle_series(version: str) -> str:
    return ".".join(version.split(".")[:2])


def unverified_adapters(version: str) -> list[str]:
    """The adapters not verified for ``version``'s series."""
    from importlib import import_module

    series = paddle_series(version)
    return [
        name
        for name in ADAPTERS
        if series not in import_module(f"llama_model.paddle_compat.{name}").VERIFIED_FOR
    ]


def check_paddle_version(version: str | None = None) -> None:
    """Refuse a Paddle whose series an adapter was not verified against (one line)."""
    if version is None:
        import paddle

        version = paddle.__version__
    unverified = unverified_adapters(version)
    if not unverified or os.environ.get(UNVERIFIED_ENV) == "1":
        return
    raise LlamaModelError(
        f"Paddle {version} is not one llama-model's adapters of Paddle internals were verified "
        f"against ({', '.join(unverified)}; see llama_model/paddle_compat); set "
        f"{UNVERIFIED_ENV}=1 to try it anyway"
    )


def applied() -> list[str]:
    """The names of the process-wide patches in force in this process."""
    from llama_model.paddle_compat import gloo

    return gloo.applied()

"""Paddle's internals are used only in ``llama_model/paddle_compat/``, in every package's sources
(llama-ops, which depends on nothing of the project, keeps its own one internal).

What counts as internal. A Paddle name is public when Paddle exports it as API: the names of
``paddle`` and of its public namespaces (``paddle.distributed.shard_tensor``, ``reshard``,
``ProcessMesh``, ``Shard``, ``set_mesh``, ``to_static``, ``paddle.nn``, ``paddle.jit``,
``paddle.inference``, ...), and a name that a documented namespace lists in its ``__all__``
(``paddle.distributed.fleet.utils.recompute``). A use is internal when it reaches Paddle:

* through a private component: ``paddle._C_ops``, ``paddle._legacy_C_ops``, any ``_name``;
* through a namespace Paddle keeps for its implementation: ``paddle.base`` (``core``),
  ``paddle.framework.core``, and under ``paddle.distributed`` the modules whose public names
  ``paddle.distributed`` re-exports: ``auto_parallel`` (its ``__all__`` is empty: ``api``,
  ``process_mesh``, ``pipelining``, ``static``), ``communication``, ``collective``; the modules
  of ``launch`` (its public surface is ``python -m paddle.distributed.launch``) and of ``fleet``
  beyond what ``fleet`` and ``fleet.utils`` export;
* through a private attribute of a Paddle object that paddle_compat wraps (``PRIVATE_ATTRIBUTES``:
  ``tensor._local_value()``, ``layer._parameters``, ``optimizer._accumulators``, ...), on anything
  but ``self``;
* by a string that names an internal module (a logger's name, an import by name).

The sources are parsed, not grepped: docstrings and comments may name internals, code may not.
"""

from __future__ import annotations

import ast
import importlib
from functools import cache
from pathlib import Path

import pytest

PACKAGES = Path(__file__).resolve().parents[2]
COMPAT = PACKAGES / "llama-model" / "src" / "llama_model" / "paddle_compat"
INTERNAL_NAMESPACES = (
    "paddle.base",
    "paddle.fluid",
    "paddle.framework.core",
    "paddle.distributed.auto_parallel",
    "paddle.distributed.communication",
    "paddle.distributed.collective",
    "paddle.distributed.launch",
    "paddle.distributed.fleet",
)
# Documented namespaces inside the internal ones: the namespace and its __all__ are public.
DOCUMENTED = (
    "paddle.distributed.launch",
    "paddle.distributed.fleet",
    "paddle.distributed.fleet.utils",
)
# The private attributes of Paddle objects that paddle_compat reaches, each on an object whose
# type the source does not name (a tensor, a layer, a schedule): told by the attribute's name.
PRIVATE_ATTRIBUTES = frozenset({
    "_accumulators", "_buffers", "_engine", "_fetch_value", "_grad_clip", "_has_backward",
    "_local_shape", "_local_value", "_parameter_to_structured_name", "_parameters", "_place",
    "_share_data_with", "_share_underline_tensor_to", "_stage", "_start",
})  # fmt: skip
# paddle_compat's own marker on what it patched: not Paddle's
OWN_ATTRIBUTES = frozenset({"_llama_model_patch"})


@cache
def _exported(namespace: str) -> frozenset[str]:
    try:
        return frozenset(getattr(importlib.import_module(namespace), "__all__", ()))
    except ImportError:
        return frozenset()


def is_internal(path: str) -> bool:
    """Whether the dotted Paddle name ``path`` is one of Paddle's internals (the rule above)."""
    parts = path.split(".")
    if parts[0] != "paddle":
        return False
    if any(p.startswith("_") and not (p.startswith("__") and p.endswith("__")) for p in parts):
        return True
    for namespace in INTERNAL_NAMESPACES:
        if path == namespace or path.startswith(namespace + "."):
            parent, _, name = path.rpartition(".")
            exported = parent in DOCUMENTED and name in _exported(parent)
            return not (path in DOCUMENTED or exported)
    return False


def _chain(node: ast.AST) -> list[str] | None:
    """``a.b.c`` as ["a", "b", "c"], or None when it does not start at a name."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(names)]


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local names bound to Paddle names: imports (``paddle`` re-exported by a package's
    ``_paddle`` module included) and assignments such as ``dist = paddle.distributed``."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "paddle":
                    aliases[alias.asname or "paddle"] = alias.name if alias.asname else "paddle"
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if node.module.split(".")[0] == "paddle" and node.level == 0:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                elif alias.name == "paddle":  # from llama_model._paddle import paddle
                    aliases[alias.asname or "paddle"] = "paddle"
    for _ in range(2):  # an alias of an alias
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, chain = node.targets[0], _chain(node.value)
                if isinstance(target, ast.Name) and chain and chain[0] in aliases:
                    aliases[target.id] = ".".join([aliases[chain[0]], *chain[1:]])
    return aliases


def internal_uses(source: str) -> list[str]:
    """``line: what`` for every use of a Paddle internal in ``source``."""
    tree = ast.parse(source)
    aliases = _aliases(tree)
    found = []
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if is_internal(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                      if is_internal(f"{node.module}.{a.name}")]  # fmt: skip
        elif isinstance(node, ast.Attribute):
            if id(node) not in inner:  # the whole chain, once
                chain = _chain(node)
                if chain and chain[0] in aliases:
                    path = ".".join([aliases[chain[0]], *chain[1:]])
                    if is_internal(path):
                        found.append((node.lineno, path))
            on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if node.attr in PRIVATE_ATTRIBUTES and not on_self:
                found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            dotted = text.startswith("paddle.") and text.replace(".", "").replace("_", "").isalnum()
            if dotted and is_internal(text):
                found.append((node.lineno, repr(text)))
    return [f"{line}: {what}" for line, what in sorted(set(found))]


def _sources() -> list[Path]:
    files = []
    for package in sorted(PACKAGES.iterdir()):
        if package.name == "llama-ops" or not (package / "src").is_dir():
            continue
        files += [p for p in sorted((package / "src").rglob("*.py")) if COMPAT not in p.parents]
    return files


def test_the_packages_sources_are_found():
    names = {p.relative_to(PACKAGES).parts[0] for p in _sources()}
    assert {"llama-model", "llama-train", "llama-infer", "llama-data", "ckpt-tools"} <= names
    assert not any(p.is_relative_to(COMPAT) for p in _sources())


def test_no_paddle_internal_outside_paddle_compat():
    offenders = []
    for path in _sources():
        offenders += [
            f"{path.relative_to(PACKAGES)}:{use}" for use in internal_uses(path.read_text())
        ]
    assert offenders == [], "Paddle internals outside llama_model/paddle_compat:\n" + "\n".join(
        offenders
    )


def test_the_private_attributes_listed_are_those_paddle_compat_reaches():
    """The list cannot drift from the adapters: every entry is used in paddle_compat, and every
    private attribute paddle_compat reaches on a Paddle object is listed (or named through a
    private module path, which the path rule catches)."""
    reached = set()
    for path in COMPAT.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
                if not node.attr.startswith("__") and not on_self:
                    reached.add(node.attr)
    by_path = {"_C_ops", "_legacy_C_ops", "_batch_p2p", "_new_process_group_impl"}
    assert reached - by_path - OWN_ATTRIBUTES == PRIVATE_ATTRIBUTES


@pytest.mark.parametrize(
    "source, found",
    [
        (
            "import paddle\npaddle.base.core.set_num_threads(2)",
            ["2: paddle.base.core.set_num_threads"],
        ),
        ("from paddle.base import core", ["1: paddle.base.core"]),
        (
            "from paddle.distributed.auto_parallel.api import dtensor_from_local",
            ["1: paddle.distributed.auto_parallel.api.dtensor_from_local"],
        ),
        (
            "import paddle.distributed as dist\ndist.auto_parallel.set_mesh(m)",
            ["2: paddle.distributed.auto_parallel.set_mesh"],
        ),
        (
            "from llama_model._paddle import paddle\ndist = paddle.distributed\nx = dist.auto_parallel.api",
            ["3: paddle.distributed.auto_parallel.api"],
        ),
        ("import paddle\npaddle._C_ops.add(a, b)", ["2: paddle._C_ops.add"]),
        (
            "from paddle.distributed.launch.main import launch",
            ["1: paddle.distributed.launch.main.launch"],
        ),
        ("t._local_value()", ["1: ._local_value"]),
        ("layer._parameters['w'] = p", ["1: ._parameters"]),
        (
            "logging.getLogger('paddle.distributed.fleet.utils.log_util')",
            ["1: 'paddle.distributed.fleet.utils.log_util'"],
        ),
        # public: re-exported by paddle.distributed, or in a documented namespace's __all__
        (
            "import paddle.distributed as dist\ndist.set_mesh(m)\ndist.shard_tensor(x, m, [dist.Shard(0)])",
            [],
        ),
        ("from paddle.distributed.fleet.utils import recompute", []),
        ("from paddle.distributed import fleet\nfleet.DistributedStrategy()", []),
        ("self._buffers = {}", []),
        ('"""see paddle.base.core and paddle.distributed.auto_parallel.api"""', []),
    ],
)
def test_what_counts_as_internal(source, found):
    assert internal_uses(source) == found

"""Each package installed alone from its built wheel into a fresh virtualenv: its command's --help
and one real command, whose output is checked against values computed here.

The wheels are built from the working tree: the package's, and those of the sibling packages its
requirements name (they are not on PyPI yet). The virtualenv gets exactly those wheel files plus
what they pull from PyPI, nothing from the working tree, the way a user's ``pip install`` would.
Paddle-using packages are installed with their ``[cpu]`` extra, as the README says.

    nox -s "wheels(llama-data)"     # one package: runs test_llama_data
    nox -s wheels                   # all of them

A new package needs its test_<name> here: without one its session collects nothing and fails.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 900


def _projects() -> dict[str, tuple[Path, dict]]:
    """{PyPI name: (directory, [project] table)} of every package of the repository."""
    found = {}
    for pyproject in sorted((ROOT / "packages").glob("*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        found[canonicalize_name(project["name"])] = (pyproject.parent, project)
    return found


PROJECTS = _projects()


def _source_version(dist: str) -> str:
    """The version written in the package's version.py (read here, never imported)."""
    path = PROJECTS[dist][0]
    (version_py,) = path.glob("src/*/version.py")
    return re.search(r'__version__ = "([^"]+)"', version_py.read_text()).group(1)


def runtime_siblings(dist: str, extras: tuple[str, ...]) -> dict[str, set[str]]:
    """{sibling: its extras} that installing ``dist[extras]`` requires, transitively."""
    needed: dict[str, set[str]] = {}

    def visit(name: str, chosen: set[str]) -> None:
        project = PROJECTS[name][1]
        reqs = list(project.get("dependencies", []))
        for extra in chosen:
            reqs += project.get("optional-dependencies", {}).get(extra, [])
        for text in reqs:
            req = Requirement(text)
            sibling = canonicalize_name(req.name)
            if sibling not in PROJECTS or sibling == name:
                continue
            new = set(req.extras) - needed.get(sibling, set())
            if sibling not in needed or new:
                needed.setdefault(sibling, set()).update(req.extras)
                visit(sibling, needed[sibling])

    visit(dist, set(extras))
    needed.pop(dist, None)
    return needed


@pytest.fixture(scope="session")
def wheel_of(tmp_path_factory):
    """Builds (once per session) the wheel of a package from the working tree."""
    house = tmp_path_factory.mktemp("wheels")
    built: dict[str, Path] = {}

    def build(dist: str) -> Path:
        if dist not in built:
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(house),
                 str(PROJECTS[dist][0])],
                check=True,
                timeout=INSTALL_TIMEOUT,
            )  # fmt: skip
            (built[dist],) = house.glob(f"{dist.replace('-', '_')}-*.whl")
        return built[dist]

    return build


class Venv:
    """A fresh virtualenv holding one package's wheel, its siblings' wheels and their PyPI needs."""

    def __init__(self, path: Path, dist: str, extras: tuple[str, ...], wheel_of):
        venv.create(path, with_pip=True)
        self.bin = path / "bin"
        self.python = str(self.bin / "python")
        # The siblings' extras come from the requirements that name them: giving a wheel file and
        # extras together trips pip's resolver (pip 23 cannot match it to `llama-model[cpu]>=...`).
        specs = [f"{wheel_of(dist)}[{','.join(extras)}]" if extras else str(wheel_of(dist))]
        specs += [str(wheel_of(name)) for name in runtime_siblings(dist, extras)]
        self.run("python", "-m", "pip", "install", "-q", "--disable-pip-version-check", *specs,
                 timeout=INSTALL_TIMEOUT)  # fmt: skip
        installed = json.loads(self.run("python", "-m", "pip", "list", "--format", "json").stdout)
        self.versions = {canonicalize_name(p["name"]): p["version"] for p in installed}

    def run(self, command: str, *args: str, timeout: float = 600, check: bool = True, **kw):
        """A command of the venv (its console scripts, or its python), from no particular directory."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(PYTHONWARNINGS="ignore", PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}")
        result = subprocess.run(
            [str(self.bin / command), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            **kw,
        )
        if check:
            assert result.returncode == 0, f"{command} {args}: {result.stderr[-3000:]}"
        return result

    def can_import(self, module: str) -> bool:
        return self.run("python", "-c", f"import {module}", check=False).returncode == 0

    def python_json(self, code: str, *args, cwd: Path | None = None) -> dict:
        """Runs ``code`` with the venv's python; its last stdout line is JSON."""
        out = self.run("python", "-c", code, *args, cwd=cwd).stdout
        return json.loads(out.strip().splitlines()[-1])


def check_cli_basics(env: Venv, command: str, dist: str, words: tuple[str, ...]) -> None:
    """``--help`` lists the commands, ``--version`` names the version in the source."""
    help_text = env.run(command, "--help").stdout
    for word in words:
        assert word in help_text
    assert _source_version(dist) in env.run(command, "--version").stdout
    assert env.versions[dist] == _source_version(dist)


# ------------------------------------------------------------------------------- llama-data
def read_mmidx(prefix: Path) -> dict:
    """An independent reader of the MMIDIDX .idx layout (the format table of llama-data's README)."""
    raw = Path(f"{prefix}.idx").read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    (version,), (code,) = struct.unpack_from("<Q", raw, 9), struct.unpack_from("<B", raw, 17)
    n, m = struct.unpack_from("<QQ", raw, 18)
    sizes = np.frombuffer(raw, np.int32, n, 34)
    pointers = np.frombuffer(raw, np.int64, n, 34 + 4 * n)
    doc_idx = np.frombuffer(raw, np.int64, m, 34 + 12 * n)
    assert 34 + 12 * n + 8 * m == len(raw)
    return {
        "version": version,
        "code": code,
        "sizes": sizes,
        "pointers": pointers,
        "doc_idx": doc_idx,
    }


def test_llama_data(tmp_path, wheel_of):
    env = Venv(tmp_path / "venv", "llama-data", (), wheel_of)
    assert not env.can_import("paddle") and not env.can_import("torch")
    check_cli_basics(env, "llama-data", "llama-data", ("preprocess", "train-tokenizer", "inspect"))

    texts = ["To be, or not to be", "héllo wörld ✓", "x" * 3000, "last one\nwith a newline"]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    prefix = tmp_path / "out" / "docs"
    env.run("llama-data", "preprocess", "--input", tmp_path / "docs.jsonl", "--tokenizer", "byte",
            "--output-prefix", prefix, "--workers", "2")  # fmt: skip

    eos = 257  # the byte tokenizer: ids 0-255 are UTF-8 bytes, then BOS 256, EOS 257, PAD 258
    docs = [[*t.encode("utf-8"), eos] for t in texts]
    idx = read_mmidx(prefix)
    assert (idx["version"], idx["code"]) == (1, 8)  # version 1, uint16
    assert idx["sizes"].tolist() == [len(d) for d in docs]
    assert idx["pointers"].tolist() == [2 * sum(len(d) for d in docs[:i]) for i in range(len(docs))]
    assert idx["doc_idx"].tolist() == list(range(len(docs) + 1))
    expected_bin = np.array([i for d in docs for i in d], np.uint16).tobytes()
    assert Path(f"{prefix}.bin").read_bytes() == expected_bin

    inspect = env.run("llama-data", "inspect", prefix).stdout
    assert re.search(rf"^tokens\s+{sum(map(len, docs)):,}\n", inspect, re.MULTILINE), inspect


# ------------------------------------------------------------------------------- ckpt-tools
def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """The safetensors layout written by hand: u64 header size, JSON header, raw little-endian data."""
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array, "<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}  # fmt: skip
        offset += len(blob)
        blobs.append(blob)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    (size,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8 : 8 + size])
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        assert info["dtype"] == "F32"
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(raw[8 + size + begin : 8 + size + end], "<f4").reshape(
            info["shape"]
        )
    return out


def test_ckpt_tools(tmp_path, wheel_of):
    env = Venv(tmp_path / "venv", "llama-ckpt-tools", (), wheel_of)
    for heavy in ("paddle", "torch", "safetensors"):
        assert not env.can_import(heavy), f"{heavy} came with llama-ckpt-tools"
    check_cli_basics(
        env, "llama-ckpt", "llama-ckpt-tools", ("merge", "export", "inspect", "verify")
    )

    # A one-layer LLaMA in the paddle layout (Linear weights [in, out]), GQA so that shapes differ.
    vocab, hidden, ffn, kv = 96, 32, 48, 16
    rng = np.random.default_rng(0)
    shapes = {
        "llama.embed_tokens.weight": (vocab, hidden),
        "llama.layers.0.self_attn.q_proj.weight": (hidden, hidden),
        "llama.layers.0.self_attn.k_proj.weight": (hidden, kv),
        "llama.layers.0.self_attn.v_proj.weight": (hidden, kv),
        "llama.layers.0.self_attn.o_proj.weight": (hidden, hidden),
        "llama.layers.0.mlp.gate_proj.weight": (hidden, ffn),
        "llama.layers.0.mlp.up_proj.weight": (hidden, ffn),
        "llama.layers.0.mlp.down_proj.weight": (ffn, hidden),
        "llama.layers.0.input_layernorm.weight": (hidden,),
        "llama.layers.0.post_attention_layernorm.weight": (hidden,),
        "llama.norm.weight": (hidden,),
        "lm_head.weight": (hidden, vocab),
    }
    tensors = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    write_safetensors(tmp_path / "model.safetensors", tensors)
    config = {"architectures": ["LlamaForCausalLM"], "vocab_size": vocab, "hidden_size": hidden,
              "intermediate_size": ffn, "num_hidden_layers": 1, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-6}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))

    out = tmp_path / "hf"
    env.run("llama-ckpt", "export", tmp_path / "model.safetensors", out, "--layout", "hf",
            "--config", tmp_path / "config.json")  # fmt: skip
    got = {}
    for shard in sorted(out.glob("*.safetensors")):
        got |= read_safetensors(shard)
    expected = {}
    for name, array in tensors.items():
        linear = name == "lm_head.weight" or name.endswith("_proj.weight")
        expected[name.replace("llama.", "model.", 1)] = array.T if linear else array
    assert sorted(got) == sorted(expected)
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)
    assert json.loads((out / "config.json").read_text())["hidden_size"] == hidden

    listing = json.loads(env.run("llama-ckpt", "inspect", out, "--json").stdout)
    assert {t["name"]: tuple(t["shape"]) for t in listing["tensors"]} == {
        k: v.shape for k, v in expected.items()
    }


# ------------------------------------------------------------------------------ llama-model
MODEL_CHECK = """
import json
import numpy as np
from llama_model import ParallelModel, Strategy, kernel_backend, preset
import paddle

config = preset("tiny")
pm = ParallelModel.build(config, Strategy(), seed=0)
opt = paddle.optimizer.AdamW(learning_rate=1e-2, parameters=pm.parameters())
ids = np.random.default_rng(0).integers(0, config.vocab_size, size=(4, 33))
losses = []
for _ in range(30):
    losses.append(pm.forward_backward(ids[:, :-1], ids[:, 1:]))
    opt.step()
    opt.clear_grad()
print(json.dumps({"backend": kernel_backend(), "vocab": config.vocab_size, "losses": losses}))
"""


def test_llama_model(tmp_path, wheel_of):
    env = Venv(tmp_path / "venv", "llama-model", ("cpu",), wheel_of)
    assert env.versions["llama-model"] == _source_version("llama-model")

    # The package's command: its golden losses, reproduced by the installed wheel with the recipe
    # that wrote them (the suite's one-process run), then compared by `compare_losses`.
    tests = PROJECTS["llama-model"][0] / "tests"
    env.run("python", tests / "dist_parity.py", "--strategy", "dp1", "--out", tmp_path / "run")
    golden = tests / "golden" / "tiny_losses.jsonl"
    same = env.run("python", "-m", "llama_model.compare_losses", tmp_path / "run" / "losses.jsonl",
                   golden)  # fmt: skip
    steps = len(golden.read_text().splitlines())
    assert f"{steps}/{steps} steps within" in same.stdout
    # ...and a golden file off by 1e-4 at one step is caught (exit status 1).
    records = [json.loads(line) for line in golden.read_text().splitlines()]
    records[-1]["loss"] += 1e-4
    (tmp_path / "off.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    off = env.run("python", "-m", "llama_model.compare_losses", tmp_path / "run" / "losses.jsonl",
                  tmp_path / "off.jsonl", check=False)  # fmt: skip
    assert off.returncode == 1, off.stdout + off.stderr

    # And it learns: 30 AdamW steps on one batch of random tokens.
    result = env.python_json(MODEL_CHECK)
    assert result["backend"] == "paddle"  # llama-ops is not installed: plain Paddle kernels
    assert result["vocab"] == 256
    # Weights drawn with std 0.02 give near-uniform logits at first: the loss is ln(vocab); 30
    # AdamW steps on one batch of random tokens then memorise a good part of it.
    assert abs(result["losses"][0] - math.log(256)) < 0.05
    assert result["losses"][-1] < 0.6 * math.log(256)


# -------------------------------------------------------------------------------- llama-ops
OPS_CHECK = """
import json, sys
import numpy as np
import llama_ops

x, w, gate, up = (np.load(f"{sys.argv[1]}/{n}.npy") for n in ("x", "w", "gate", "up"))
import paddle
t = paddle.to_tensor
for name, out in (
    ("rms_fused", llama_ops.fused.rms_norm(t(x), t(w), 1e-6)),
    ("rms_fallback", llama_ops.fallback.rms_norm(t(x), t(w), 1e-6)),
    ("swiglu_fused", llama_ops.fused.swiglu(t(gate), t(up))),
):
    np.save(f"{sys.argv[1]}/{name}.npy", out.numpy())
print(json.dumps({"backend": llama_ops.backend()}))
"""


def test_llama_ops(tmp_path, wheel_of):
    env = Venv(tmp_path / "venv", "llama-ops", ("cpu",), wheel_of)
    rng = np.random.default_rng(0)
    arrays = {"x": (64, 256), "w": (256,), "gate": (64, 128), "up": (64, 128)}
    arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in arrays.items()}
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array)
    result = env.python_json(OPS_CHECK, tmp_path)
    assert result["backend"].startswith("fused")  # the wheel carries the compiled kernels

    x, w, gate, up = (arrays[k].astype(np.float64) for k in ("x", "w", "gate", "up"))
    rms = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w
    swiglu = gate / (1 + np.exp(-gate)) * up
    np.testing.assert_allclose(np.load(tmp_path / "rms_fused.npy"), rms, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "rms_fallback.npy"), rms, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "swiglu_fused.npy"), swiglu, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ llama-train
def test_llama_train(tmp_path, wheel_of):
    env = Venv(tmp_path / "venv", "llama-train", ("cpu",), wheel_of)
    check_cli_basics(env, "llama-train", "llama-train", ("run", "plot"))
    assert "--strategy" in env.run("llama-train", "run", "--help").stdout

    # A small byte-level corpus through llama-data's command (a dependency, installed as a wheel).
    lines = [json.dumps({"text": f"Line {i} of a tiny corpus, long enough for a few samples. " * 3})
             for i in range(40)]  # fmt: skip
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    env.run("llama-data", "preprocess", "--input", tmp_path / "train.jsonl", "--tokenizer", "byte",
            "--output-prefix", tmp_path / "data" / "train")  # fmt: skip
    # Two processes through the launcher: the installed package must start its own workers.
    run = tmp_path / "run"
    env.run("llama-train", "run", "--strategy", "dp2", "--model-config", "tiny", "--tokenizer",
            "byte", "--data", tmp_path / "data" / "train", "--output", run, "--seq-len", "32",
            "--micro-batch-size", "2", "--max-steps", "3", "--eval-every", "0", "--save-every", "0",
            "--split", "1", "--lr", "1e-3", "--log-every", "1", cwd=tmp_path)  # fmt: skip

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    # The tiny preset takes the tokenizer's vocabulary (259) rounded up to a multiple of 128.
    vocab = math.ceil(259 / 128) * 128
    step = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    assert step.name == "step-00000003" and (step / "COMPLETE").exists()
    assert json.loads((step / "config.json").read_text())["vocab_size"] == vocab
    assert abs(train[0]["loss"] - math.log(vocab)) < 0.1
    assert sorted(p.name for p in step.glob("*.distcp")) == ["0_0.distcp", "1_0.distcp"]


# ------------------------------------------------------------------------------ llama-infer
INFER_MODEL = """
import json, sys
import numpy as np
import paddle
from llama_ckpt import export
from llama_model import LlamaConfig, LlamaForCausalLM

out, prompt, new = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
config = LlamaConfig(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                     rms_norm_eps=1e-6, initializer_range=0.2, bos_token_id=256, eos_token_id=257)
model = LlamaForCausalLM(config)
model.init_weights(3)
model.eval()
paddle.save(model.state_dict(), f"{out}/model.pdparams")
config.to_json(out)
export(f"{out}/model.pdparams", f"{out}/model")
# Greedy decoding by recomputing the whole sequence at each step (no cache): the reference.
ids = list(prompt)
with paddle.no_grad():
    for _ in range(new):
        nxt = int(model(paddle.to_tensor([ids])).numpy()[0, -1].argmax())
        if nxt == config.eos_token_id:
            break
        ids.append(nxt)
print(json.dumps({"ids": ids[len(prompt):]}))
"""


def test_llama_infer(tmp_path, wheel_of):
    env = Venv(tmp_path / "venv", "llama-infer", ("cpu",), wheel_of)
    prompt, new = "To be, or not", 12
    expected = env.python_json(INFER_MODEL, tmp_path, prompt, new)["ids"]
    result = env.run("llama-infer", "--model", tmp_path / "model", "--tokenizer", "byte", "--prompt",
                     prompt, "--max-new-tokens", new, "--no-stream", "--threads", "1")  # fmt: skip
    # Without streaming, each completion is printed as a JSON record (the prompt plus "output").
    record = json.loads(result.stdout)
    assert record["src"] == prompt
    assert record["output"] == bytes(i for i in expected if i < 256).decode("utf-8", "replace")
    check_cli_basics(env, "llama-infer", "llama-infer", ("--model", "--prompt"))

"""Export to static programs and generation through Paddle's inference engine: the same tokens as
dygraph, a fresh process that never imports llama-model, and one-line refusals of bad exports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import paddle
import pytest
from conftest import padded_prompts, random_model, tiny_config, write_model_dir
from test_loading_and_cli import cli, error_line

from llama_infer import (
    CachedDecoder,
    Generator,
    InferError,
    StaticDecoder,
    export_model,
    read_manifest,
)
from llama_infer.manifest import CUSTOM_OPS

CAPACITY = 40


# The session says whether llama-ops is installed: llama-ops' nox session runs this suite with it
# (default exports are then fused), llama-infer's own without it (every export is portable).
FUSED = os.environ.get("LLAMA_MODEL_EXPECT_KERNELS", "").startswith("llama-ops")
KINDS = ("default", "portable")


@pytest.fixture(scope="module")
def exports(model_dirs, tmp_path_factory):
    """{(name, kind): (model, model_dir, export_dir)} for the MHA and the GQA (tied) model, each
    exported by default and with --portable."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, (model, paddle_dir, _) in model_dirs.items():
        for kind in KINDS:
            export_dir = str(root / f"{name}-{kind}")
            out[name, kind] = (model, paddle_dir, export_dir)
            result = cli(
                "export", "--model", paddle_dir, "--output", export_dir,
                "--max-seq-len", str(CAPACITY), *(["--portable"] if kind == "portable" else []),
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            fused = FUSED and kind == "default"
            assert read_manifest(export_dir)["custom_ops"] == (list(CUSTOM_OPS) if fused else [])
            assert ("with llama-ops' fused decoder layers" in result.stderr) == fused, result.stderr
    return out


def _batch(prompts):
    width = max(map(len, prompts))
    pads = np.array([width - len(p) for p in prompts])
    batch = np.zeros((len(prompts), width), np.int64)
    for i, p in enumerate(prompts):
        batch[i, pads[i] :] = p
    return batch, pads


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["mha", "gqa"])
def test_static_steps_give_dygraph_logits(exports, name, kind):
    model, _, export_dir = exports[name, kind]
    # padded, and unpadded (dygraph's prefill then takes the causal path, the export the masked one)
    for lengths in ((4, 11, 1), (9, 9)):
        batch, pads = _batch(padded_prompts(7, lengths))
        dygraph, static = CachedDecoder(model), StaticDecoder(export_dir, threads=1)
        d_state, d_logits = dygraph.prefill(batch, pads, 20)
        s_state, s_logits = static.prefill(batch, pads, 20)
        assert tuple(s_state.keys[0].shape)[2] == CAPACITY  # the exported, fixed capacity
        rng = np.random.default_rng(1)
        for _ in range(6):  # prefill, then decode steps fed the same (random) tokens
            np.testing.assert_allclose(s_logits, d_logits, rtol=1e-4, atol=1e-5)
            tokens = rng.integers(0, 256, len(batch))
            d_logits, s_logits = dygraph.step(d_state, tokens), static.step(s_state, tokens)


@pytest.mark.parametrize("kind", KINDS)
def test_generations_taking_turns_keep_their_own_state(exports, kind):
    """Two generations stepped in turns on one decoder (two streams served together): each sees
    the slots it opened, as in dygraph. A fused export's decoder binds the predictor to one
    generation at a time and keeps each one's mask with it."""
    model, _, export_dir = exports["gqa", kind]
    dygraph, static = CachedDecoder(model), StaticDecoder(export_dir, threads=1)
    runs = []
    for seed, lengths in ((3, (5, 2)), (4, (7, 7, 3))):
        batch, pads = _batch(padded_prompts(seed, lengths))
        runs.append([*dygraph.prefill(batch, pads, 30), *static.prefill(batch, pads, 30)])
    rng = np.random.default_rng(2)
    for turn in range(8):
        d_state, d_logits, s_state, s_logits = runs[turn % 2]
        np.testing.assert_allclose(s_logits, d_logits, rtol=1e-4, atol=1e-5)
        tokens = rng.integers(0, 256, len(s_logits))
        runs[turn % 2][1] = dygraph.step(d_state, tokens)
        runs[turn % 2][3] = static.step(s_state, tokens)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["mha", "gqa"])
def test_static_generation_matches_dygraph(exports, name, kind):
    _, model_dir, export_dir = exports[name, kind]
    dygraph, static = Generator(model_dir, threads=1), Generator(export_dir, threads=1)
    single = [padded_prompts(3, (6,))[0]]
    padded = padded_prompts(4, (5, 12, 2, 8))
    for prompts in (single, padded):
        options = dict(max_new_tokens=12, eos_token_ids=(), batch_size=len(prompts))
        want = [c.token_ids for c in dygraph.generate_ids(prompts, **options)]
        got = [c.token_ids for c in static.generate_ids(prompts, **options)]
        assert got == want
        assert all(len(ids) == 12 for ids in got)
    sampled = dict(max_new_tokens=10, eos_token_ids=(), decode_strategy="sampling", top_p=0.9)
    want = [c.token_ids for c in dygraph.generate_ids(padded, seed=5, **sampled)]
    assert [c.token_ids for c in static.generate_ids(padded, seed=5, **sampled)] == want


def test_manifest_names_the_programs_inputs_and_outputs(exports):
    _, _, export_dir = exports["gqa", "default"]
    manifest = read_manifest(export_dir)
    assert sorted(os.listdir(export_dir)) == [
        "config.json",
        "decode.json",
        "export.json",
        "params.pdiparams",
        "prefill.json",
    ]  # fmt: skip  -- the two programs share one parameter file
    assert manifest["capacity"] == CAPACITY and manifest["num_layers"] == 2
    decoder = StaticDecoder(export_dir, threads=1)
    for name, predictor in (
        ("prefill", decoder.prefill_program),
        ("decode", decoder.decode_program),
    ):
        inputs = [s["name"] for s in manifest["programs"][name]["inputs"]]
        assert predictor.get_input_names() == inputs
        assert inputs[:4] == ["input_ids", "positions", "start", "mask"]
        assert inputs[4:] == ["key_cache_0", "key_cache_1", "value_cache_0", "value_cache_1"]
        assert len(predictor.get_output_names()) == len(manifest["programs"][name]["outputs"]) == 5
    kv = manifest["programs"]["decode"]["inputs"][4]["shape"]
    assert kv == [None, 2, CAPACITY, 16]  # [batch (open), kv heads, capacity, head_dim]
    assert manifest["programs"]["decode"]["inputs"][0]["shape"] == [None, 1]
    assert manifest["programs"]["prefill"]["inputs"][0]["shape"] == [None, None]
    # since format 3: the step's mask has the scores' shape [b, kv heads, group, capacity]
    assert manifest["programs"]["decode"]["inputs"][3]["shape"] == [None, 2, 2, CAPACITY]
    assert manifest["programs"]["prefill"]["inputs"][3]["shape"] == [None, 1, 1, None, None]


# Run in a fresh interpreter where importing the packages named by the first argument fails: serving
# an export must need only paddle and llama-infer, and llama-ops for a fused one.
_WITHOUT = """
import runpy, sys
refused = sys.argv[1].split(",")
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in refused:
            raise ImportError(f"{name} must not be imported")
sys.meta_path.insert(0, Refuse())
sys.argv = ["llama-infer", *sys.argv[2:]]
runpy.run_module("llama_infer.cli", run_name="__main__")
"""


@pytest.fixture(scope="module")
def byte_export(tmp_path_factory):
    """(model_dir, export_dir) of a model with the byte tokenizer's vocabulary (259 ids), so prompts
    can be text."""
    model = random_model(tiny_config(vocab_size=260, eos_token_id=257, bos_token_id=256), seed=9)
    root = tmp_path_factory.mktemp("byte")
    model_dir, export_dir = write_model_dir(model, str(root / "m")), str(root / "export")
    result = cli("export", "--model", model_dir, "--output", export_dir, "--max-seq-len", "40")
    assert result.returncode == 0, result.stderr
    return model_dir, export_dir


def test_export_runs_in_a_process_without_llama_model(byte_export, tmp_path):
    model_dir, export_dir = byte_export
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"src": "To be"}\n{"src": "or not to be, that is"}\n')
    args = ["--threads", "1", "--tokenizer", "byte", "--input-file", str(prompts)]
    args += ["--max-new-tokens", "8", "--batch-size", "2"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    refused = "llama_model" if FUSED else "llama_model,llama_ops"
    static = subprocess.run(
        [sys.executable, "-c", _WITHOUT, refused, "--model", export_dir, *args],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert static.returncode == 0, static.stderr
    dygraph = cli("--model", model_dir, *args[2:])
    assert dygraph.returncode == 0, dygraph.stderr
    outputs = [json.loads(line)["output"] for line in static.stdout.splitlines()]
    assert len(outputs) == 2 and all(isinstance(o, str) for o in outputs)
    assert outputs == [json.loads(line)["output"] for line in dygraph.stdout.splitlines()]


def test_bad_exports_and_prompts_fail_in_one_line(byte_export, tmp_path):
    model_dir, export_dir = byte_export
    run = ("--tokenizer", "byte", "--prompt", "To be")
    # A prompt + new tokens beyond the exported capacity (the model's own context is 64).
    assert "exceeds the export's capacity" in error_line(
        cli("--model", export_dir, *run, "--max-new-tokens", str(CAPACITY))
    )
    assert "longer than the export's capacity" in error_line(
        cli("--model", export_dir, "--tokenizer", "byte", "--prompt", "x" * CAPACITY)
    )
    # A newer export format: upgrading llama-infer is the fix (the other versions: below).
    from llama_infer import __version__
    from llama_infer.manifest import FORMAT_VERSION

    newer = tmp_path / "newer"
    shutil.copytree(export_dir, newer)
    manifest = json.loads((newer / "export.json").read_text())
    manifest.update(format_version=FORMAT_VERSION + 1, created_by="llama-infer 9.0.0")
    (newer / "export.json").write_text(json.dumps(manifest))
    assert error_line(cli("--model", str(newer), *run)) == (
        f"Error: {newer} was exported by llama-infer 9.0.0 in export format {FORMAT_VERSION + 1}, "
        f"newer than the format {FORMAT_VERSION} llama-infer {__version__} reads: upgrade "
        "llama-infer (pip install -U llama-infer)"
    )
    # A missing program.
    broken = tmp_path / "broken"
    shutil.copytree(export_dir, broken)
    (broken / "decode.json").unlink()
    line = error_line(cli("--model", str(broken), *run))
    assert "decode.json is missing: the export is incomplete" in line
    # Exporting over an existing directory, a capacity beyond the context, a dtype the CPU lacks.
    assert "exists; remove it or pass --overwrite" in error_line(
        cli("export", "--model", model_dir, "--output", export_dir)
    )
    new = str(tmp_path / "new")
    assert "between 2 and the model's context (64)" in error_line(
        cli("export", "--model", model_dir, "--output", new, "--max-seq-len", "65")
    )
    assert not os.path.exists(new)  # nothing half-written left behind
    if not paddle.is_compiled_with_cuda():
        assert "needs a GPU" in error_line(
            cli("export", "--model", model_dir, "--output", new, "--dtype", "bfloat16")
        )
    assert "--dtype bfloat16 applies when exporting" in error_line(
        cli("--model", export_dir, *run, "--dtype", "bfloat16")
    )
    assert [f for f in os.listdir(tmp_path) if f.startswith(".")] == []


def _altered(export_dir, tmp_path, name, **manifest_changes):
    """A copy of the export whose manifest has ``manifest_changes`` (None: the key removed)."""
    other = tmp_path / name
    shutil.copytree(export_dir, other)
    manifest = json.loads((other / "export.json").read_text())
    manifest.update(manifest_changes)
    manifest = {k: v for k, v in manifest.items() if v is not None}
    (other / "export.json").write_text(json.dumps(manifest))
    return other


def test_manifest_format_versions(byte_export, tmp_path):
    """An older export is made again, a newer one needs a newer llama-infer, and a version that is
    not an integer is a malformed manifest."""
    from llama_infer import __version__
    from llama_infer.manifest import FORMAT_VERSION

    _, export_dir = byte_export
    assert read_manifest(export_dir)["format_version"] == FORMAT_VERSION == 4
    cases = {
        (3, "llama-infer 0.5.0"): "{dir} was exported by llama-infer 0.5.0 in export format 3; "
        f"llama-infer {__version__} reads format 4: export the model again with this version",
        (5, "llama-infer 9.0.0"): "{dir} was exported by llama-infer 9.0.0 in export format 5, "
        f"newer than the format 4 llama-infer {__version__} reads: upgrade llama-infer "
        "(pip install -U llama-infer)",
        (5, None): "{dir} was exported by an unknown llama-infer in export format 5, newer than "
        f"the format 4 llama-infer {__version__} reads: upgrade llama-infer "
        "(pip install -U llama-infer)",
        ("4", "llama-infer 0.6.0"): "{dir}/export.json: malformed manifest (format_version '4', "
        "expected an integer); export the model again",
        (None, "llama-infer 0.6.0"): "{dir}/export.json: malformed manifest (no format_version, "
        "expected an integer); export the model again",
        (4.0, "llama-infer 0.6.0"): "{dir}/export.json: malformed manifest (format_version 4.0, "
        "expected an integer); export the model again",
        (True, "llama-infer 0.6.0"): "{dir}/export.json: malformed manifest (format_version True, "
        "expected an integer); export the model again",
    }
    for i, ((version, by), message) in enumerate(cases.items()):
        other = _altered(export_dir, tmp_path, f"v{i}", format_version=version, created_by=by)
        with pytest.raises(InferError) as info:
            read_manifest(str(other))
        assert str(info.value) == message.format(dir=other), (version, by)


def test_a_broken_file_of_an_export_is_named(byte_export, tmp_path):
    """A parameter file cut short is named as such, not as the program that uses it: by its size
    against the manifest's, and by Paddle's error for an export whose manifest has no sizes (those
    of llama-infer 0.6.0)."""
    _, export_dir = byte_export
    sizes = read_manifest(export_dir)["files"]
    assert sorted(sizes) == ["decode.json", "params.pdiparams", "prefill.json"]
    assert sizes == {f: os.path.getsize(os.path.join(export_dir, f)) for f in sizes}
    params = "params.pdiparams"
    cut = _altered(export_dir, tmp_path, "cut")
    data = (cut / params).read_bytes()
    (cut / params).write_bytes(data[: len(data) // 2])
    with pytest.raises(InferError) as info:
        read_manifest(str(cut))
    assert str(info.value) == (
        f"{cut / params} has {len(data) // 2} bytes where the export wrote {len(data)}: it was "
        "cut short or changed; export the model again"
    )
    line = error_line(cli("--model", str(cut), "--tokenizer", "byte", "--prompt", "To be"))
    assert line == f"Error: {info.value}"
    # Without the sizes, Paddle is the first to read the files: its error tells which one.
    old = _altered(cut, tmp_path, "old", files=None)
    with pytest.raises(InferError) as info:
        StaticDecoder(str(old), threads=1)
    assert str(info.value).startswith(
        f"{old / params} (the parameters of prefill.json): Paddle cannot load it ("
    )
    broken = _altered(export_dir, tmp_path, "broken-program", files=None)
    (broken / "prefill.json").write_text('{"program": ')
    with pytest.raises(InferError) as info:
        StaticDecoder(str(broken), threads=1)
    assert str(info.value).startswith(f"{broken / 'prefill.json'}: Paddle cannot load it (")


def test_export_api_ships_tokenizer_and_overwrites(model_dirs, tmp_path):
    model, _, _ = model_dirs["gqa"]
    tokenizer_dir = tmp_path / "tok"
    tokenizer_dir.mkdir()
    (tokenizer_dir / "tokenizer.json").write_text('{"model": {}}')
    (tokenizer_dir / "tokenizer_config.json").write_text('{"add_bos_token": false}')
    out = tmp_path / "export"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    manifest = export_model(
        model, str(out), capacity=8, tokenizer=str(tokenizer_dir), overwrite=True
    )
    assert manifest["capacity"] == 8 and manifest["dtype"] == "float32"
    assert not (out / "stale.txt").exists()  # replaced whole, not merged
    assert (out / "tokenizer.json").read_text() == '{"model": {}}'
    assert (out / "tokenizer_config.json").exists()
    # The exported config is the model's.
    assert json.loads((out / "config.json").read_text())["num_key_value_heads"] == 2


def test_a_fused_export_needs_llama_ops_and_says_so(byte_export, tmp_path):
    """Served where llama-ops cannot be imported, a fused export is refused in one line that names
    llama-ops and --portable; exported where llama-ops is missing, an export is portable and the
    command says why."""
    model_dir, export_dir = byte_export
    if not FUSED:
        assert read_manifest(export_dir)["custom_ops"] == []
        result = cli("export", "--model", model_dir, "--output", str(tmp_path / "again"))
        assert result.returncode == 0, result.stderr
        assert "with plain Paddle operators (llama-ops is " in result.stderr  # not installed or off
        return
    run = ["--model", export_dir, "--tokenizer", "byte", "--prompt", "To be", "--threads", "1"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    served = subprocess.run(
        [sys.executable, "-c", _WITHOUT, "llama_model,llama_ops", *run],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert served.returncode == 2, served.stderr
    line = error_line(served)
    assert "needs llama-ops" in line and "fused_decoder_layer" in line, line
    assert "--portable" in line, line

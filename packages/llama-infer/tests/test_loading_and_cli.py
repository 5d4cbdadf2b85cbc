"""Loading every accepted input, refusing bad ones in one line, and the command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import paddle
import pytest
from conftest import random_model, save_pdparams, tiny_config, write_model_dir

from llama_infer import Generator, InferError, load_model

CLI = [sys.executable, "-m", "llama_infer.cli"]


def cli(*args, stdin=None):
    """``llama-infer ARGS`` (generation on one thread, unless ARGS name the export command)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = list(args) if args and args[0] == "export" else ["--threads", "1", *args]
    return subprocess.run(
        [*CLI, *command],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def error_line(result) -> str:
    lines = [
        line
        for line in result.stderr.splitlines()
        if "Warning" not in line and "warnings.warn" not in line
    ]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory):
    """A model whose vocabulary fits the byte tokenizer (259 ids), with the tokenizer named in the dir."""
    model = random_model(tiny_config(vocab_size=260, eos_token_id=257, bos_token_id=256), seed=5)
    return model, write_model_dir(model, str(tmp_path_factory.mktemp("m") / "byte"))


def test_each_input_kind_loads_the_same_weights(byte_model, tmp_path):
    model, directory = byte_model
    expected = {k: v.numpy() for k, v in model.state_dict().items()}
    pdparams = save_pdparams(model, str(tmp_path / "pickled"))
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000010"
    ckpt.mkdir(parents=True)
    paddle.distributed.save_state_dict(
        {f"model.{k}": v for k, v in model.state_dict().items()}, str(ckpt)
    )
    model.config.to_json(str(ckpt))
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-00000010\n")
    for path, kw in [
        (directory, {}),
        (pdparams, {}),  # read by llama-ckpt-tools' restricted reader, as the checkpoint is
        (str(ckpt), {}),
        (str(tmp_path / "run"), {}),
    ]:
        loaded = load_model(path, **kw).model
        for name, value in loaded.state_dict().items():
            np.testing.assert_array_equal(value.numpy(), expected[name], err_msg=f"{path}: {name}")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pdparams_that_names_code_is_refused_and_runs_nothing(byte_model, tmp_path):
    """What --allow-pickle once guarded: a .pdparams goes through llama-ckpt-tools' restricted
    reader, which refuses a pickle naming a function before anything runs."""
    import pickle

    model, _ = byte_model
    directory = tmp_path / "hostile"
    save_pdparams(model, str(directory))
    marker = tmp_path / "pwned"
    with open(directory / "model.pdparams", "wb") as fh:
        pickle.dump({"llama.embed_tokens.weight": _Exploit(marker)}, fh, protocol=4)
    with pytest.raises(InferError, match=r"refusing to load .*(posix|os)\.system"):
        load_model(str(directory))
    assert not marker.exists()


def test_bad_model_directories(byte_model, tmp_path):
    directory = byte_model[1]
    with pytest.raises(InferError, match="no such file"):
        load_model(str(tmp_path / "nowhere"))
    no_config = tmp_path / "no-config"
    shutil.copytree(directory, no_config)
    os.remove(no_config / "config.json")
    with pytest.raises(InferError, match=r"no config\.json"):
        load_model(str(no_config))
    wrong = tmp_path / "wrong-shape"
    shutil.copytree(directory, wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (wrong / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        InferError,
        match=r"gate_proj.weight has shape \[64, 128\] but config.json implies \[64, 96\]",
    ):
        load_model(str(wrong))
    fewer = tmp_path / "fewer-layers"
    shutil.copytree(directory, fewer)
    cfg = json.loads((fewer / "config.json").read_text())
    cfg["num_hidden_layers"] = 1
    (fewer / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InferError, match=r"llama\.layers\.1\..* is not a parameter"):
        load_model(str(fewer))


def test_tokenizer_must_match_the_vocabulary(tmp_path):
    model = random_model(tiny_config(vocab_size=200), seed=1)
    directory = write_model_dir(model, str(tmp_path / "small-vocab"))
    with pytest.raises(InferError, match="259 tokens but the model's vocabulary has 200"):
        Generator(directory, "byte")


def test_prompt_checks(byte_model):
    gen = Generator(byte_model[1], "byte")
    with pytest.raises(InferError, match="empty prompt"):
        gen.generate("  ")
    with pytest.raises(InferError, match="longer than the model's context"):
        gen.generate("x" * 80)
    with pytest.raises(InferError, match="exceeds the model's context of 64"):
        gen.generate("x" * 40, max_new_tokens=30)


def test_generate_stream_and_stop(byte_model):
    gen = Generator(byte_model[1], "byte")
    full = gen.generate("Hello", max_new_tokens=12, eos_token_ids=())
    assert len(full.token_ids) == 12 and full.finish_reason == "length"
    assert full.text == bytes(t for t in full.token_ids if t < 256).decode("utf-8", "replace")
    # Streaming yields the same text in pieces.
    assert "".join(gen.stream("Hello", max_new_tokens=12, eos_token_ids=())) == full.text
    # A stop string: the text ends before it, and the stream agrees.
    stop = full.text[5:7]
    cut = gen.generate("Hello", max_new_tokens=12, stop=[stop], eos_token_ids=())
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]
    assert (
        "".join(gen.stream("Hello", max_new_tokens=12, stop=[stop], eos_token_ids=())) == cut.text
    )
    # Batched, left-padded prompts give what each prompt gives alone.
    alone = [gen.generate(p, max_new_tokens=8).token_ids for p in ("Hi", "Good morning", "Yes")]
    together = gen.generate(["Hi", "Good morning", "Yes"], max_new_tokens=8)
    assert [c.token_ids for c in together] == alone


def test_cli_prompt_file_and_interactive(byte_model, tmp_path):
    directory = byte_model[1]
    gen = Generator(directory, "byte")
    expected = [gen.generate(p, max_new_tokens=10).text for p in ("To be", "or not")]
    result = cli(
        "--model", directory, "--tokenizer", "byte", "--prompt", "To be", "--max-new-tokens", "10"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected[0] + "\n"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"src": "To be", "id": 1}\n{"src": "or not", "id": 2}\n')
    out = tmp_path / "out.jsonl"
    result = cli(
        "--model", directory, "--tokenizer", "byte", "--input-file", str(prompts),
        "--output-file", str(out), "--max-new-tokens", "10", "--batch-size", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["output"] for r in records] == expected
    assert [r["id"] for r in records] == [1, 2]
    result = cli(
        "--model",
        directory,
        "--tokenizer",
        "byte",
        "--interactive",
        "--max-new-tokens",
        "10",
        stdin="To be\n\nor not\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected[0] + "\n" + expected[1] + "\n"


def test_cli_errors_are_one_line(byte_model, tmp_path):
    directory = byte_model[1]
    assert "no such file" in error_line(cli("--model", str(tmp_path / "none"), "--prompt", "a"))
    assert "empty prompt" in error_line(
        cli("--model", directory, "--tokenizer", "byte", "--prompt", "")
    )
    assert "longer than the model's context" in error_line(
        cli("--model", directory, "--tokenizer", "byte", "--prompt", "x" * 100)
    )
    if not paddle.is_compiled_with_cuda():  # a GPU build decodes in bfloat16 instead
        assert "needs a GPU" in error_line(
            cli("--model", directory, "--prompt", "a", "--dtype", "bfloat16")
        )
    assert "no tokenizer" in error_line(cli("--model", directory, "--prompt", "a"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no src"}\n')
    assert '"src"' in error_line(cli("--model", directory, "--input-file", str(bad)))


def test_cli_group_version_help_and_default_command():
    def run(*args):
        return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)

    from llama_infer import __version__

    assert run("--version").stdout.strip() == f"llama-infer, version {__version__}"
    listing = run("--help").stdout
    assert "export" in listing and "generate" in listing
    # generation is the default command: its options work without naming it
    assert "--decode-strategy" in run("generate", "--help").stdout
    missing = run("--model", "/nonexistent", "--prompt", "a")
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr


def _installed(*args) -> subprocess.CompletedProcess:
    """The installed ``llama-infer`` script (the program name its messages carry)."""
    script = os.path.join(os.path.dirname(sys.executable), "llama-infer")
    return subprocess.run(
        [script, *map(str, args)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip


def _clicks_own_error_line(command, args, prog_name) -> str:
    """The ``Error:`` line click prints last for a plain command (after the usage, a hint and a
    blank line when it knows the command): its wording changes between click versions, so the
    one-line form is compared to it. Parsing fails, so nothing of the command runs."""
    from click.testing import CliRunner

    result = CliRunner().invoke(command, args, prog_name=prog_name)
    lines = result.stderr.splitlines()
    assert result.exit_code == 2 and len(lines) in (1, 4), lines
    if len(lines) == 4:
        assert lines[1:3] == [f"Try '{prog_name} --help' for help.", ""], lines
    return lines[-1]


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["--model", "m", "--bogus"], "--bogus"),  # an unknown option (the default command's)
        (["generate", "--prompt", "a"], "--model"),  # a missing option
        (["generate", "--prompt", "a", "--model"], "--model"),  # a missing option value
        (["export", "--model", "m"], "--output"),
        (["export", "--model", "m", "--output", "o", "--dtype", "int8"], "int8"),
    ],
)
def test_usage_errors_are_one_line(args, word):
    from llama_infer.cli import main

    name = args[0] if args[0] in main.commands else "generate"
    own = args[1:] if args[0] in main.commands else args
    line = _clicks_own_error_line(main.commands[name], own, f"llama-infer {name}")
    assert line.startswith("Error: ") and word in line
    result = _installed(*args)
    assert (result.returncode, result.stdout) == (2, "")
    end = "" if line.endswith((".", "?")) else "."  # click ends some messages without a stop
    assert result.stderr == f"{line}{end} Try 'llama-infer {name} --help'.\n"


@pytest.mark.parametrize(
    ("option", "value"),
    [("--temperature", "inf"), ("--repetition-penalty", "inf"), ("--top-p", "nan"),
     ("--temperature", "-inf")],
)  # fmt: skip
def test_non_finite_float_options_are_refused(option, value):
    result = _installed("--model", "m", "--prompt", "a", option, value)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"Error: Invalid value for '{option}': '{value}' is not a finite number. "
        "Try 'llama-infer generate --help'.\n"
    )


@pytest.mark.parametrize("command", [[], ["export", "--output", "o"]])
def test_allow_pickle_is_refused_saying_why(command):
    result = _installed(*command, "--model", "m", "--allow-pickle")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "Error: --allow-pickle is gone (llama-infer 0.6.0 was the last to take it): a .pdparams "
        "is read by llama-ckpt-tools' restricted reader, which runs no code, as a checkpoint's "
        "pickles always were, so it loads without the option; drop it\n"
    )
    listing = _installed(*(command[:1] or ["generate"]), "--help")
    assert listing.returncode == 0 and "--model" in listing.stdout
    assert "--allow-pickle" not in listing.stdout

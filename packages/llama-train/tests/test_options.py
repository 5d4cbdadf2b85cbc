import json

import pytest
from click.testing import CliRunner

from llama_train import RunConfig, RunRecord, TrainError
from llama_train.cli import main
from llama_train.config_file import read_config_file
from llama_train.options import OPTIONS, resolve, warmup_steps

REQUIRED = {"model_config": "tiny", "data": ("d",), "output": "out"}


SECTIONED = """
[parallel]
strategy = "dp2mp2"
[training]
max-steps = 50
[optimizer]
lr = 1e-3
[data]
data = ["a", "b"]
data_weights = [0.3, 0.7]
"""
FLAT = (
    'strategy = "dp2mp2"\nmax-steps = 50\nlr = 1e-3\ndata = ["a", "b"]\ndata-weights = [0.3, 0.7]\n'
)


@pytest.mark.parametrize("text", [SECTIONED, FLAT], ids=["sectioned", "flat"])
def test_flags_override_file_override_defaults(tmp_path, text):
    toml = tmp_path / "run.toml"
    toml.write_text(text)
    file_values = read_config_file(str(toml))
    cfg = resolve(file_values, {"model_config": "tiny", "output": "o", "lr": 5e-4, "data": ()})
    assert cfg.parallel.strategy == "dp2mp2"  # from the file
    assert cfg.training.max_steps == 50  # from the file
    assert cfg.optimizer.lr == 5e-4  # the flag wins
    assert cfg.data.data == ("a", "b") and cfg.data.data_weights == (0.3, 0.7)
    assert cfg.optimizer.adam_beta2 == 0.999  # default
    assert warmup_steps(cfg) == 1  # 1% of 50, rounded up


def test_json_config_and_written_run_record(tmp_path):
    from llama_model import preset
    from llama_train import run_record

    (tmp_path / "run.json").write_text(
        json.dumps(
            {
                "training": {"micro_batch_size": 2, "global_batch_size": 16},
                "parallel": {"strategy": "dp2"},
            }
        )
    )
    cfg = resolve(read_config_file(str(tmp_path / "run.json")), REQUIRED)
    record = run_record.resolve(cfg, preset("tiny"))
    assert cfg.training.grad_accum is None  # the options stay as given
    assert record.micro_batches == 4 and record.batch_size == 16
    assert record.strategy.dp == 2 and record.seq_len == 128  # the preset's positions
    record.write(str(tmp_path / "run_config.json"))
    assert RunRecord.read(str(tmp_path / "run_config.json")) == record
    assert RunConfig.read(str(tmp_path / "run_config.json")) == cfg


@pytest.mark.parametrize(
    "values, message",
    [
        ({"strategy": "dp2xq3"}, "cannot parse strategy"),
        ({"strategy": "dp2", "nproc_per_node": 4, "nnodes": 1}, "needs 2 processes"),
        ({"global_batch_size": 10, "micro_batch_size": 4}, "not a multiple"),
        ({"amp": "fp8"}, "must be one of"),
        ({"min_lr": 1.0, "lr": 0.1}, "exceeds --lr"),
        ({"nnodes": 2}, "needs --master"),
    ],
)
def test_bad_options_are_one_line(values, message):
    with pytest.raises(TrainError, match=message) as info:
        resolve({}, {**REQUIRED, **values})
    assert "\n" not in str(info.value)


def test_unknown_key_in_file(tmp_path):
    (tmp_path / "run.toml").write_text("learning_rate = 1\n")
    with pytest.raises(TrainError, match="unknown option 'learning_rate'"):
        read_config_file(str(tmp_path / "run.toml"))


# Every float option, with a non-finite value and the line that refuses it.
NON_FINITE = [
    ("lr", float("nan"), "--lr must be a finite number, got nan"),
    ("lr", float("inf"), "--lr must be a finite number, got inf"),
    ("min_lr", float("-inf"), "--min-lr must be a finite number, got -inf"),
    ("adam_beta1", float("nan"), "--adam-beta1 must be a finite number, got nan"),
    ("adam_beta2", float("nan"), "--adam-beta2 must be a finite number, got nan"),
    ("adam_eps", float("inf"), "--adam-eps must be a finite number, got inf"),
    ("weight_decay", float("nan"), "--weight-decay must be a finite number, got nan"),
    ("clip_grad", float("inf"), "--clip-grad must be a finite number, got inf"),
    ("peak_tflops", float("nan"), "--peak-tflops must be a finite number, got nan"),
    ("data_weights", "0.5,nan", "--data-weights must be finite numbers, got nan"),
]


def test_every_float_option_is_checked_for_finiteness():
    floats = {name for name, spec in OPTIONS.items() if spec.kind.base is float}
    assert floats == {name for name, _, _ in NON_FINITE}


@pytest.mark.parametrize("name, value, message", NON_FINITE)
def test_non_finite_numbers_are_refused(name, value, message):
    flags = {**REQUIRED, "data": ("a", "b"), name: value}
    with pytest.raises(TrainError) as info:
        resolve({}, flags)
    assert str(info.value) == message


def test_non_finite_number_in_a_config_file(tmp_path):
    (tmp_path / "run.toml").write_text("adam-eps = nan\ndata-weights = [1.0, inf]\n")
    with pytest.raises(TrainError) as info:
        resolve(read_config_file(str(tmp_path / "run.toml")), {**REQUIRED, "data": ("a", "b")})
    assert str(info.value) == "--data-weights must be finite numbers, got inf"


def test_non_finite_lr_on_the_command_line(tmp_path):
    out = str(tmp_path / "out")
    result = CliRunner().invoke(main, ["--model-config", "tiny", "--data", "d", "--output", out, "--lr", "nan"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == ["Error: --lr must be a finite number, got nan"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value, shown", [(0.0, "0"), (-1.5, "-1.5")])
def test_peak_tflops_must_be_positive(value, shown):
    """0 used to pass the check and then count as unset (no MFU, no word of it)."""
    with pytest.raises(TrainError) as info:
        resolve({}, {**REQUIRED, "peak_tflops": value})
    assert str(info.value) == f"--peak-tflops must be > 0, got {shown}"
    assert resolve({}, {**REQUIRED, "peak_tflops": 0.34}).logging.peak_tflops == 0.34


def test_peak_tflops_zero_on_the_command_line(tmp_path):
    out = str(tmp_path / "out")
    args = ["--model-config", "tiny", "--data", "d", "--output", out, "--peak-tflops", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == ["Error: --peak-tflops must be > 0, got 0"]


@pytest.mark.parametrize(
    "name, text",
    [
        ("run.toml", "max_steps = 5\nlr = 1e-3\nmax-steps = 7\n"),
        ("run.json", '{"max_steps": 5, "lr": 1e-3, "max-steps": 7}'),
    ],
)
def test_one_option_under_two_spellings_in_a_config_file(tmp_path, name, text):
    """Both spellings of one option: the later one used to win silently."""
    (tmp_path / name).write_text(text)
    with pytest.raises(TrainError) as info:
        read_config_file(str(tmp_path / name))
    assert str(info.value) == (
        f"config file {tmp_path / name}: 'max_steps' and 'max-steps' are the same option "
        "(--max-steps); keep one"
    )


# ---------------------------------------------------------------------- the sectioned config file
def _refusal(tmp_path, text: str, name: str = "run.toml") -> str:
    (tmp_path / name).write_text(text)
    with pytest.raises(TrainError) as info:
        resolve(read_config_file(str(tmp_path / name)), REQUIRED)
    assert "\n" not in str(info.value)
    return str(info.value).replace(str(tmp_path / name), name)


@pytest.mark.parametrize(
    "text, line",
    [
        (
            "[training]\nmicro_batch = 2\n",
            "config file run.toml: unknown option 'micro_batch' in [training]; did you mean "
            "'micro_batch_size'?",
        ),
        (
            "[training]\nstratgy = 'dp2'\n",
            "config file run.toml: unknown option 'stratgy' in [training]; did you mean 'strategy' "
            "(in [parallel])?",
        ),
        (
            "[training]\nstrategy = 'dp2'\n",
            "config file run.toml: option 'strategy' belongs in [parallel], not [training]",
        ),
        (
            "[trainig]\nmax_steps = 5\n",
            "config file run.toml: unknown section [trainig]; did you mean [training]?",
        ),
        (
            "lr = 1e-3\n[training]\nmax_steps = 5\n",
            "config file run.toml: option 'lr' is outside any section; put it under [optimizer]",
        ),
        (
            "[training]\nmax_steps = 'ten'\n",
            "config file run.toml: [training] max_steps must be an integer, got 'ten'",
        ),
        (
            "[training]\nmax_steps = 5.5\n",
            "config file run.toml: [training] max_steps must be an integer, got 5.5",
        ),
        (
            "[training]\nto_static = 1\n",
            "config file run.toml: [training] to_static must be true or false, got 1",
        ),
        (
            "[optimizer]\nlr = true\n",
            "config file run.toml: [optimizer] lr must be a number, got True",
        ),
        (
            "[data]\ndata_weights = [0.5, 'x']\n",
            "config file run.toml: [data] data_weights must be a list of numbers, got [0.5, 'x']",
        ),
        (
            "[parallel]\nstrategy = 2\n",
            "config file run.toml: [parallel] strategy must be a string, got 2",
        ),
        (
            "[training]\nmax_steps = 5\nmax-steps = 7\n",
            "config file run.toml: 'max_steps' and 'max-steps' are the same option (--max-steps); "
            "keep one",
        ),
        (
            "max_stepz = 5\n",
            "config file run.toml: unknown option 'max_stepz'; did you mean 'max_steps'?",
        ),
        ("max_steps = 'ten'\n", "config file run.toml: max_steps must be an integer, got 'ten'"),
        (
            "format = 3\n[training]\nmax_steps = 5\n",
            "config file run.toml: unknown format 3 (this llama-train reads 1 and 2)",
        ),
    ],
    ids=lambda value: value.splitlines()[0][:40] if "\n" in value else "",
)
def test_each_refusal_of_a_config_file_is_one_line(tmp_path, text, line):
    assert _refusal(tmp_path, text) == line


def test_a_sectioned_json_file_is_refused_the_same_way(tmp_path):
    text = json.dumps({"training": {"micro_batch": 2}})
    assert _refusal(tmp_path, text, "run.json") == (
        "config file run.json: unknown option 'micro_batch' in [training]; did you mean "
        "'micro_batch_size'?"
    )


def test_a_flat_file_is_read_with_one_note_showing_the_sectioned_form(tmp_path):
    (tmp_path / "run.toml").write_text(FLAT)
    notes = []
    values = read_config_file(str(tmp_path / "run.toml"), say=notes.append)
    assert len(notes) == 1 and "\n" not in notes[0]
    assert notes[0] == (
        f"note: {tmp_path / 'run.toml'} uses the flat form; the sectioned form is: "
        '[data] data = ["a", "b"] data_weights = [0.3, 0.7] [parallel] strategy = "dp2mp2" '
        "[training] max_steps = 50 [optimizer] lr = 0.001"
    )
    # the sectioned file of the same options reads the same, without a note
    (tmp_path / "sectioned.toml").write_text(SECTIONED)
    quiet = []
    assert read_config_file(str(tmp_path / "sectioned.toml"), say=quiet.append) == values
    assert quiet == []


def _format1(record) -> dict:
    """run_config.json as llama-train 0.2 wrote it: every option flat (seq_len and grad_accum
    filled in, resume the checkpoint's path), the Strategy as "parallel", "init_source"."""
    flat = {
        name: list(v) if isinstance(v, tuple) else v for name, v in record.options.flat().items()
    }
    flat.update(seq_len=record.seq_len, grad_accum=record.micro_batches, resume=record.resume)
    return {"format": 1, **flat, "parallel": record.strategy.to_dict(),
            "init_source": record.init_source}  # fmt: skip


def test_a_format_1_run_config_is_still_read(tmp_path):
    from llama_model import preset
    from llama_train import run_record

    cfg = resolve({}, {**REQUIRED, "strategy": "dp2", "global_batch_size": 8, "seed": 7})
    record = run_record.resolve(cfg, preset("tiny"))
    path = tmp_path / "run_config.json"
    path.write_text(json.dumps(_format1(record), indent=2))
    again = RunRecord.read(str(path))
    assert again.strategy == record.strategy and again.seq_len == record.seq_len
    assert again.resume is None and again.init_source is None
    assert again.batch_size == record.batch_size == 8
    options = RunConfig.read(str(path))  # as --config reads it: the filled-in values are options
    assert options.training.seed == 7 and options.training.seq_len == record.seq_len
    assert options.parallel == cfg.parallel


def test_the_toml_writer_round_trips_what_a_configuration_holds():
    import math
    import random

    from llama_train import toml_writer
    from llama_train.config_file import tomllib

    rng = random.Random(0)
    floats = [3e-05, 1e-08, 0.1 + 0.2, 1e300, 5e-324, -0.0, 1234.0, 2.5e16, 1 / 3, 0.999]
    floats += [rng.uniform(-1, 1) * 10 ** rng.randint(-30, 30) for _ in range(200)]
    document = {
        "format": 2,
        "floats": floats,
        "strings": [
            "plain",
            'quote " and \\ back',
            "tab\tnew\nline\r\x00\x1f\x7f",
            "é ü 中文 🙂",
            "",
        ],
        "flags": [True, False],
        "section": {
            "lr": 3e-4,
            "name": "x",
            "steps": 10,
            "unset": None,
            "on": True,
            "data": ["a", "b"],
            "weights": [0.25, 0.75],
            "nested": {"dp": 2, "stage_layers": None},
        },
        "empty": {},
        "odd key.with dots": {"a b": 1},
    }
    text = toml_writer.dumps(document, header="a header\nof two lines")
    back = tomllib.loads(text)
    assert text.startswith("# a header\n# of two lines\n")
    expected = json.loads(json.dumps(document))  # tuples as lists, like tomllib
    del expected["section"]["unset"], expected["section"]["nested"]["stage_layers"]
    assert back == expected
    for got, want in zip(back["floats"], floats):  # bit for bit, the sign of -0.0 included
        assert math.copysign(1, got) == math.copysign(1, want) and got == want
    special = tomllib.loads(
        toml_writer.dumps({"x": [float("inf"), float("-inf")], "n": float("nan")})
    )
    assert special["x"] == [float("inf"), float("-inf")] and math.isnan(special["n"])
    with pytest.raises(TypeError):
        toml_writer.dumps({"x": object()})


def test_print_config_is_the_sectioned_record_and_a_config_file(tmp_path):
    from llama_train.config_file import tomllib
    from llama_train.options import SECTIONS

    out = tmp_path / "out"
    args = ["--model-config", "tiny", "--tokenizer", "byte", "--data", "d", "--output", out,
            "--strategy", "dp2", "--global-batch-size", "8", "--lr", "3e-3", "--print-config"]  # fmt: skip
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert not out.exists()  # nothing trained, nothing written
    printed = tomllib.loads(result.output)
    assert printed["format"] == 2 and set(SECTIONS) <= set(printed)
    assert printed["job"]["output"] == str(out) and printed["optimizer"]["lr"] == 3e-3
    assert printed["resolved"]["parallel"]["micro_batches"] == 4
    assert printed["resolved"]["seq_len"] == 128
    (tmp_path / "printed.toml").write_text(result.output)
    assert RunConfig.read(str(tmp_path / "printed.toml")) == resolve(
        {}, {"model_config": "tiny", "tokenizer": "byte", "data": ("d",), "output": str(out),
             "strategy": "dp2", "global_batch_size": 8, "lr": 3e-3}
    )  # fmt: skip


def test_help_lists_each_option_under_its_section():
    from llama_train.cli import section_title
    from llama_train.options import SECTION_OPTIONS

    result = CliRunner().invoke(main, ["run", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    heading_of = {}  # flag -> the heading it is listed under
    heading = None
    for line in result.output.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            heading = line[:-1]
        elif line.startswith("  --"):
            heading_of[line.split()[0].split("/")[0]] = heading
    for section, names in SECTION_OPTIONS.items():
        assert section_title(section) in result.output
        for name in names:
            assert heading_of["--" + name.replace("_", "-")] == section_title(section), name
    assert heading_of["--config"] == heading_of["--print-config"] == "Options"


def test_a_refused_config_file_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "run.toml").write_text("[training]\nmicro_batch = 2\n")
    out = tmp_path / "out"
    args = ["--config", str(tmp_path / "run.toml"), "--model-config", "tiny", "--data", "d",
            "--output", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        f"Error: config file {tmp_path / 'run.toml'}: unknown option 'micro_batch' in [training]; "
        "did you mean 'micro_batch_size'?"
    ]
    assert not out.exists()

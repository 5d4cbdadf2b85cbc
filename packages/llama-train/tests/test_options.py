import json

import pytest
from click.testing import CliRunner

from llama_train import RunConfig, TrainError
from llama_train.cli import main
from llama_train.options import FIELDS, read_config_file, resolve

REQUIRED = {"model_config": "tiny", "data": ("d",), "output": "out"}


def test_flags_override_file_override_defaults(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        'strategy = "dp2mp2"\nmax-steps = 50\nlr = 1e-3\ndata = ["a", "b"]\ndata-weights = [0.3, 0.7]\n'
    )
    file_values = read_config_file(str(toml))
    cfg = resolve(file_values, {"model_config": "tiny", "output": "o", "lr": 5e-4, "data": ()})
    assert cfg.strategy == "dp2mp2"  # from the file
    assert cfg.max_steps == 50  # from the file
    assert cfg.lr == 5e-4  # the flag wins
    assert cfg.data == ["a", "b"] and cfg.data_weights == [0.3, 0.7]
    assert cfg.adam_beta2 == 0.999  # default
    assert cfg.warmup == 1  # 1% of 50, rounded up


def test_json_config_and_written_resolved_config(tmp_path):
    (tmp_path / "run.json").write_text(
        json.dumps({"micro_batch_size": 2, "global_batch_size": 16, "strategy": "dp2"})
    )
    cfg = resolve(read_config_file(str(tmp_path / "run.json")), REQUIRED)
    assert cfg.grad_accum == 4 and cfg.batch_size == 16
    cfg.seq_len = 64
    cfg.write(str(tmp_path / "resolved.json"))
    again = RunConfig.read(str(tmp_path / "resolved.json"))
    assert again == cfg


@pytest.mark.parametrize(
    "values, message",
    [
        ({"strategy": "dp2xq3"}, "cannot parse strategy"),
        ({"strategy": "dp2", "nproc_per_node": 4}, "needs 2 processes"),
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
    floats = {name for name, f in FIELDS.items() if "float" in str(f.type)}
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

import json
import subprocess
import sys

from llama_model.compare_losses import main


def _write(path, losses):
    path.write_text(
        "".join(json.dumps({"step": i, "loss": v, "lr": 1e-3}) + "\n" for i, v in enumerate(losses))
    )
    return str(path)


def test_match_mismatch_and_bad_input(tmp_path, capsys):
    golden = _write(tmp_path / "golden.jsonl", [5.0, 4.5, 4.0])
    assert main([_write(tmp_path / "same.jsonl", [5.0, 4.500004, 4.0, 3.9]), golden]) == 0
    assert "3/3 steps within" in capsys.readouterr().out
    assert main([_write(tmp_path / "off.jsonl", [5.0, 4.6, 4.0]), golden]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "2/3 steps within" in out
    assert main([_write(tmp_path / "off.jsonl", [5.0, 4.6, 4.0]), golden, "--rtol", "0.05"]) == 0
    capsys.readouterr()
    assert main([_write(tmp_path / "short.jsonl", [5.0]), golden]) == 2
    assert "Error: the run has no loss for golden steps [1, 2]" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text("step 0 loss 5\n")
    assert main([str(tmp_path / "bad.jsonl"), golden]) == 2


def test_module_entry_point(tmp_path):
    golden = _write(tmp_path / "g.jsonl", [1.0])
    proc = subprocess.run([sys.executable, "-m", "llama_model.compare_losses", str(tmp_path / "nope.jsonl"), golden],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: cannot read")

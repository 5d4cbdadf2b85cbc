import json
import struct

from click.testing import CliRunner

from llama_train.cli import main


def test_plot_writes_a_png_of_the_curves(tmp_path):
    records = [
        {"step": k, "split": "train", "loss": 6.0 / k, "lr": 1e-3 * min(1, k / 5)}
        for k in range(1, 21)
    ]
    records += [{"step": 10, "split": "valid", "valid_loss": 0.7, "valid_ppl": 2.01},
                {"step": 20, "split": "valid", "valid_loss": 0.4, "valid_ppl": 1.49}]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = CliRunner().invoke(main, ["plot", str(tmp_path)])
    assert result.exit_code == 0, result.output
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (800, 600)  # 8 x 6 inches at 100 dpi


def test_plot_of_a_directory_without_metrics_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["plot", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: {tmp_path}: no metrics.jsonl (is it a llama-train output directory?)"
    ]

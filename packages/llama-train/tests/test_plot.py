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
    assert (width, height) == (900, 680)  # 9 x (2 + 1.6 per panel) inches at 100 dpi, 3 panels


def _colour_pixels(png, rgb) -> int:
    import matplotlib.pyplot as plt
    import numpy as np

    image = plt.imread(str(png))[..., :3]
    return int((np.abs(image - np.array(rgb) / 255).max(axis=-1) < 0.02).sum())


def test_plot_of_several_runs_draws_each_in_its_colour(tmp_path):
    for i, name in enumerate(("run-a", "run-b")):
        run = tmp_path / name
        run.mkdir()
        records = [
            {"step": k, "split": "train", "loss": 6.0 / k + i, "lr": 1e-3, "tokens_per_s": 100.0 + 10 * i,
             "peak_memory_gib": 0.5 + i}
            for k in range(1, 11)
        ]  # fmt: skip
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    png = tmp_path / "both.png"
    result = CliRunner().invoke(main, ["plot", str(tmp_path / "run-a"), str(tmp_path / "run-b"),
                                       "--png", str(png)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {png}\n"
    width, height = struct.unpack(">II", png.read_bytes()[16:24])
    assert (width, height) == (900, 840)  # the memory panel makes 4
    # matplotlib's first two colours, C0 and C1: each run is drawn.
    assert _colour_pixels(png, (31, 119, 180)) > 200
    assert _colour_pixels(png, (255, 127, 14)) > 200
    one = tmp_path / "one.png"
    CliRunner().invoke(main, ["plot", str(tmp_path / "run-a"), "--png", str(one)])
    assert _colour_pixels(one, (255, 127, 14)) < 20


def test_plot_of_a_directory_without_metrics_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["plot", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: {tmp_path}: no metrics.jsonl (is it a llama-train output directory?)"
    ]

import subprocess
import sys


def test_missing_paddle_fails_with_one_line_naming_both_builds():
    code = "import sys; sys.modules['paddle'] = None; import llama_model"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: llama-model needs PaddlePaddle")
    assert "llama-model[cpu]" in last and "paddlepaddle-gpu" in last

"""The runtime settings when llama-ops is what loads Paddle, and the one warning when the application
loaded Paddle first: llama-ops alone (llama-model refused in a fresh interpreter) applies its two
variables itself; with llama-model installed it hands over to llama-model's configure_runtime (its
own tests compare that with the command's settings)."""

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import paddle
import pytest

import llama_ops

NAMES = ("MKL_DEBUG_CPU_TYPE", "GOMP_SPINCOUNT", "KMP_AFFINITY")
LIBS = Path(paddle.__file__).parent / "libs"
KERNELS = (Path(llama_ops.__file__).parent / "_kernels.so").exists()
_CPU = Path("/proc/cpuinfo").read_text()[:8192] if Path("/proc/cpuinfo").exists() else ""
AMD_AVX2 = "AuthenticAMD" in _CPU and " avx2" in _CPU

# A fresh interpreter where importing the packages named by the first argument fails, then the rest
# of the arguments run as code; it prints the variables, then the warnings about Paddle's import.
_WITHOUT = """
import os, sys, warnings
refused = sys.argv[1].split(",")
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in refused:
            raise ImportError(f"{name} must not be imported")
sys.meta_path.insert(0, Refuse())
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as seen:
    exec(sys.argv[2])
print({n: os.environ.get(n) for n in ("MKL_DEBUG_CPU_TYPE", "GOMP_SPINCOUNT", "KMP_AFFINITY")})
print(repr([(w.category.__name__, str(w.message)) for w in seen if "Paddle was imported" in str(w.message)]))
"""


def _run(refused: str, code: str, **env) -> tuple[dict, list]:
    keep = {k: v for k, v in os.environ.items() if k not in NAMES and k != "LLAMA_OPS_DISABLE"}
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT, refused, code],
        env={**keep, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    variables, warned = proc.stdout.strip().splitlines()[-2:]
    return ast.literal_eval(variables), ast.literal_eval(warned)


def test_alone_llama_ops_sets_its_two_variables_when_it_loads_paddle():
    variables, warned = _run("llama_model", "import llama_ops")
    assert variables == {
        "MKL_DEBUG_CPU_TYPE": "5" if AMD_AVX2 else None,
        "GOMP_SPINCOUNT": "0" if KERNELS else None,
        "KMP_AFFINITY": None,
    }
    assert warned == []
    # The user's own values stand; LLAMA_OPS_DISABLE=1: no kernels, no libgomp to quiet.
    variables, _ = _run("llama_model", "import llama_ops", GOMP_SPINCOUNT="300")
    assert variables["GOMP_SPINCOUNT"] == "300"
    variables, _ = _run("llama_model", "import llama_ops", LLAMA_OPS_DISABLE="1")
    assert variables["GOMP_SPINCOUNT"] is None


def test_alone_after_paddle_warns_once_where_it_matters_and_sets_nothing():
    variables, warned = _run(
        "llama_model", "import paddle\nimport llama_ops\nimport llama_ops.fused, llama_ops._library"
    )
    assert variables == dict.fromkeys(NAMES)
    mkl = AMD_AVX2 and (LIBS / "libmklml_intel.so").exists()
    gomp = KERNELS and (LIBS / "libiomp5.so").exists()
    assert len(warned) == (1 if mkl or gomp else 0)
    if warned:
        category, text = warned[0]
        assert category == "RuntimeWarning"
        assert ("MKL_DEBUG_CPU_TYPE=5" in text) == mkl and ("GOMP_SPINCOUNT=0" in text) == gomp
        assert "0.36x" in text or "0.6x" in text  # the measured cost
        assert "import llama_ops before paddle" in text  # the fix


@pytest.mark.skipif(
    importlib.util.find_spec("llama_model") is None, reason="llama-model is not installed"
)
def test_with_llama_model_installed_the_settings_are_its_configure_runtime():
    from llama_model.runtime import _wanted

    variables, warned = _run("", "import llama_ops")
    expected = dict.fromkeys(NAMES) | _wanted(pin_threads=False)
    assert variables == expected and warned == []

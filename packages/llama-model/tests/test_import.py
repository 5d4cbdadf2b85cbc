import os
import subprocess
import sys


def _run(code: str, **env) -> subprocess.CompletedProcess:
    keep = {
        k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "MKL_DEBUG_CPU_TYPE")
    }
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**keep, **env}
    )


def test_missing_paddle_fails_with_one_line_naming_both_builds():
    # The package itself imports without Paddle (configs, strategies); the model needs it.
    code = "import sys; sys.modules['paddle'] = None; import llama_model; from llama_model import LlamaForCausalLM"
    proc = _run(code)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: llama-model needs PaddlePaddle")
    assert "llama-model[cpu]" in last and "paddlepaddle-gpu" in last


def test_imports_change_nothing_and_load_only_what_is_used():
    code = (
        "import os, sys\n"
        "before = dict(os.environ)\n"
        "import llama_model\n"
        "from llama_model import LlamaConfig, Strategy, preset\n"
        "light = 'paddle' in sys.modules\n"
        "from llama_model import LlamaForCausalLM\n"
        "stack = [m for m in ('parallel', 'pipeline', 'static', 'paddle_compat.gloo') if 'llama_model.' + m in sys.modules]\n"
        "import llama_model.runtime as r\n"
        "print(light, stack, dict(os.environ) == before, r.malloc_tuned())"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "[]", "True", "False"]


def test_configure_runtime_applies_each_setting_once_and_never_over_the_user():
    import importlib.util

    code = (
        "import os, llama_model\n"
        "first = llama_model.configure_runtime()\n"
        "second = llama_model.configure_runtime()\n"
        "import paddle\n"
        "print(repr(os.environ.get('GOMP_SPINCOUNT')), 'malloc keeps freed memory' in first.applied, second.applied)"
    )
    import paddle

    installed = importlib.util.find_spec("llama_ops") is not None
    cuda = paddle.is_compiled_with_cuda()
    out = _run(code).stdout.split()
    # llama-ops' libgomp threads must not spin between its kernels and Paddle's matmuls
    assert out[0] == ("'0'" if installed else "None")
    assert out[1] == str(not cuda) and out[2] == "[]"
    assert _run(code, GOMP_SPINCOUNT="300").stdout.split()[0] == "'300'"  # the user's choice stands
    assert _run(code, LLAMA_OPS_DISABLE="1").stdout.split()[0] == "None"
    assert _run(code, MALLOC_ARENA_MAX="2").stdout.split()[1] == "False"
    assert _run(code, LLAMA_MODEL_MALLOC_TUNING="0").stdout.split()[1] == "False"
    # Called after paddle is loaded, the variables come too late: said, not set.
    from llama_model.runtime import _amd_cpu_with_avx2

    expected = (["MKL_DEBUG_CPU_TYPE=5"] if _amd_cpu_with_avx2() else []) + (
        ["GOMP_SPINCOUNT=0"] if installed else []
    )
    late = _run("import paddle, llama_model; print(llama_model.configure_runtime().too_late)")
    assert late.returncode == 0, late.stderr
    assert late.stdout.strip() == str(expected)

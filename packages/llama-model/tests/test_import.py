import ast
import os
import subprocess
import sys
from pathlib import Path


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
        "import llama_model.runtime as r\n"
        "light = 'paddle' in sys.modules\n"
        "unchanged = dict(os.environ) == before and not r.malloc_tuned()\n"
        "from llama_model import LlamaForCausalLM\n"
        "stack = [m for m in ('parallel', 'pipeline', 'static', 'paddle_compat.gloo') if 'llama_model.' + m in sys.modules]\n"
        "print(light, stack, unchanged)"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "[]", "True"]


# What a process ends up with: the variables configure_runtime() may set, whether it tuned malloc
# (llama-model's record, or, with llama-ops loading Paddle alone, glibc's answer is not readable:
# the record is the report), and whether Paddle is loaded.
_SETTINGS = (
    "import os, sys\n"
    "from llama_model import runtime\n"
    "names = ('MKL_DEBUG_CPU_TYPE', 'GOMP_SPINCOUNT', 'KMP_AFFINITY')\n"
    "print({n: os.environ.get(n) for n in names}, runtime.malloc_tuned(), 'paddle' in sys.modules)"
)


def test_importing_parallel_model_first_applies_the_commands_settings():
    """A fresh process whose first line is ``from llama_model import ParallelModel`` (so llama-model
    loads Paddle) ends up with exactly the settings of one that called configure_runtime() first,
    as the llama-train command and worker do; so do llama-ops and llama-infer loading Paddle."""
    import importlib.util

    import paddle

    from llama_model.runtime import _amd_cpu_with_avx2, fused_kernels_coming

    command = _run(
        "from llama_model import configure_runtime\nconfigure_runtime()\n"
        "from llama_model import ParallelModel\n" + _SETTINGS
    )
    assert command.returncode == 0, command.stderr
    firsts = ["from llama_model import ParallelModel"]
    if importlib.util.find_spec("llama_ops") is not None:
        firsts.append("import llama_ops")
    if importlib.util.find_spec("llama_infer") is not None:
        firsts.append("from llama_infer import Generator")
    for first in firsts:
        proc = _run(
            f"import warnings\nwarnings.simplefilter('error', RuntimeWarning)\n{first}\n"
            + _SETTINGS
        )
        assert proc.returncode == 0, (first, proc.stderr[-3000:])
        assert proc.stdout == command.stdout, first
    cpu = not paddle.is_compiled_with_cuda()
    expected = {
        "MKL_DEBUG_CPU_TYPE": "5" if _amd_cpu_with_avx2() else None,
        "GOMP_SPINCOUNT": "0" if fused_kernels_coming() else None,
        "KMP_AFFINITY": None,
    }
    assert command.stdout.strip() == f"{expected} {cpu} True"


def test_paddle_imported_first_gets_one_warning_where_it_matters_and_nothing_applied():
    """The application imported paddle itself: the packages change nothing, and one RuntimeWarning
    (whichever of them comes next, however many) names what is lost where it matters: MKL's code
    path on an AMD CPU with Paddle's old MKL, libgomp beside MKL's OpenMP with llama-ops."""
    import importlib.util

    import paddle

    from llama_model.runtime import _amd_cpu_with_avx2, fused_kernels_coming

    imports = ["from llama_model import ParallelModel", "from llama_model import kernels"]
    imports += ["import llama_ops"] if importlib.util.find_spec("llama_ops") else []
    imports += ["import llama_infer.generation"] if importlib.util.find_spec("llama_infer") else []
    code = (
        "import os, sys, warnings\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    import paddle\n"
        "    before = dict(os.environ)\n"
        + "".join(f"    {line}\n" for line in imports)
        + "from llama_model import runtime\n"
        "ours = [str(w.message) for w in seen if 'Paddle was imported before' in str(w.message)]\n"
        "assert all(w.category is RuntimeWarning for w in seen if str(w.message) in ours)\n"
        "print(repr(ours))\n"
        "print(dict(os.environ) == before, runtime.malloc_tuned(), runtime.applied_at_import())"
    )
    libs = Path(paddle.__file__).parent / "libs"
    mkl = _amd_cpu_with_avx2() and (libs / "libmklml_intel.so").exists()
    gomp = fused_kernels_coming() and (libs / "libiomp5.so").exists()  # libgomp beside MKL's
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warned, state = proc.stdout.strip().splitlines()
    messages = ast.literal_eval(warned)
    assert state == "True False None"  # nothing applied, the allocator untouched
    assert len(messages) == (1 if mkl or gomp else 0)
    if messages:
        text = messages[0]
        assert ("MKL_DEBUG_CPU_TYPE=5" in text) == mkl and ("GOMP_SPINCOUNT=0" in text) == gomp
        assert "x" in text.split("(")[1] and "configure_runtime()" in text  # a factor, the fix
    # The user's own variables: nothing is lost, nothing said.
    proc = _run(code, MKL_DEBUG_CPU_TYPE="5", GOMP_SPINCOUNT="0")
    assert proc.stdout.splitlines()[0] == "[]", proc.stderr[-3000:]


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
    # Called after paddle is loaded, a variable whose library is loaded comes too late: said, not
    # set. libgomp loads with paddle; MKL only at Paddle's first matrix product, so until then
    # MKL_DEBUG_CPU_TYPE is still applied.
    from llama_model.runtime import _amd_cpu_with_avx2

    mkl = ["MKL_DEBUG_CPU_TYPE=5"] if _amd_cpu_with_avx2() else []
    shipped = (Path(paddle.__file__).parent / "libs" / "libmklml_intel.so").exists()  # x86 wheels
    gomp = ["GOMP_SPINCOUNT=0"] if installed else []
    late = (
        "import paddle, llama_model\n"
        "{matmul}"
        "report = llama_model.configure_runtime()\n"
        "print([a for a in report.applied if '=' in a], report.too_late)"
    )
    before_mkl = _run(late.format(matmul=""))
    assert before_mkl.returncode == 0, before_mkl.stderr
    assert before_mkl.stdout.strip() == f"{mkl} {gomp}"
    after_mkl = _run(
        late.format(matmul="paddle.matmul(paddle.ones([2, 2]), paddle.ones([2, 2]))\n")
    )
    assert after_mkl.returncode == 0, after_mkl.stderr
    assert after_mkl.stdout.strip() == (f"[] {mkl + gomp}" if shipped else f"{mkl} {gomp}")

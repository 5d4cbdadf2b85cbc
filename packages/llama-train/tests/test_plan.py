"""``llama-train plan``: per-rank parameter counts, the memory model against Megatron's closed
formulas and against what the ranks really hold (``--check``), the schedules' micro-batches in
flight, ``auto``, ``--json``, the refusals, and the pre-launch check of the GPU path."""

import json
import math

import pytest
from click.testing import CliRunner
from conftest import run_cli

from llama_model import Strategy, preset
from llama_train.cli import main
from llama_train.plan import activations
from llama_train.plan.devices import Device, device
from llama_train.plan.estimate import make_plan
from llama_train.plan.job import LLAMA_OPS, Job
from llama_train.plan.parameters import stage_tensors
from llama_train.plan.ranks import plan_memory
from llama_train.plan.schedule import peak_in_flight


def invoke(args, env=None):
    result = CliRunner().invoke(main, ["plan", *map(str, args)], env=env)
    lines = [line for line in result.output.splitlines() if line.strip()]
    return result.exit_code, lines


def job(config="tiny", strategy="dp1", mbs=1, seq=32, recompute=None, dtype="float32",
        dev="cpu", kernels=LLAMA_OPS, **options):  # fmt: skip
    cfg = preset(config) if isinstance(config, str) else config
    dev = device(dev) if isinstance(dev, str) else dev
    return Job(cfg, Strategy.parse(strategy, **options), mbs, seq, recompute, dtype, dev, kernels)


# ------------------------------------------------------------------------------ parameters
# Per rank under dp2mp2pp2, counted by hand from the published shapes (h hidden, i MLP width, L
# layers, V vocabulary, kv the key/value width): a layer holds q and o (h·h each) and k and v
# (h·kv each) split over mp2, gate, up and down (h·i each) split over mp2, and two norms (h)
# whole; stage 0 holds layers 0..L/2-1 and the whole embedding (V·h, replicated over mp), stage 1
# the other half, the final norm (h) and half of the head (V·h/2).
#   llama2-7b: h 4096, i 11008, L 32, V 32000, kv 4096: layer 101,195,776
#   llama2-13b: h 5120, i 13824, L 40, V 32000, kv 5120: layer 158,607,360
#   llama3-8b: h 4096, i 14336, L 32, V 128256, kv 1024: layer 109,060,096
PRESET_RANKS = {
    "llama2-7b": (16 * 101_195_776 + 131_072_000, 16 * 101_195_776 + 4096 + 65_536_000),
    "llama2-13b": (20 * 158_607_360 + 163_840_000, 20 * 158_607_360 + 5120 + 81_920_000),
    "llama3-8b": (16 * 109_060_096 + 525_336_576, 16 * 109_060_096 + 4096 + 262_668_288),
}


@pytest.mark.parametrize("name", sorted(PRESET_RANKS))
def test_parameters_per_rank_of_the_presets_under_dp2mp2pp2(name):
    config, strategy = preset(name), Strategy.parse("dp2mp2pp2")
    counts = tuple(sum(t.elements for t in stage_tensors(config, strategy, s)) for s in range(2))
    assert counts == PRESET_RANKS[name]
    assert counts == {"llama2-7b": (1_750_204_416, 1_684_672_512),
                      "llama2-13b": (3_335_987_200, 3_254_072_320),
                      "llama3-8b": (2_270_298_112, 2_007_633_920)}[name]  # fmt: skip
    # the whole model, once: llama2-7b has 6,738,415,616 parameters
    whole = sum(t.elements for t in stage_tensors(config, Strategy(), 0))
    assert whole == {"llama2-7b": 6_738_415_616, "llama2-13b": 13_015_864_320,
                     "llama3-8b": 8_030_261_248}[name]  # fmt: skip
    plan = make_plan(job(name, "dp2mp2pp2", seq=4096, dtype="bfloat16", dev="H100-80GB",
                         micro_batches=4))  # fmt: skip
    assert [r["parameters"] for r in plan.to_json()["ranks"]] == [counts[0]] * 4 + [counts[1]] * 4


@pytest.mark.parametrize("strategy, options", [("pp2", {}), ("pp4", {}),
                         ("pp2", {"schedule": "VPP", "virtual_pp_degree": 2, "micro_batches": 2})])  # fmt: skip
def test_stage_parameters_equal_the_built_stage(strategy, options):
    """The counts come from the model's own shapes: each stage built (without memory) holds them."""
    import paddle

    from llama_model.pipeline import build_stage

    config, parsed = preset("tiny"), Strategy.parse(strategy, **options)
    for stage in range(parsed.pp):
        with paddle.LazyGuard():
            module = build_stage(config, parsed, stage)
        built = sum(math.prod(p.shape) for p in module.parameters())
        assert sum(t.elements for t in stage_tensors(config, parsed, stage)) == built


# --------------------------------------------------------------------- against Megatron
def korthikanti_llama(s, b, h, a, kv_heads, inner):
    """Korthikanti et al. 2022 (sec. 4.1), per layer, 16-bit activations, no tensor or sequence
    parallelism, adapted to LLaMA term by term: RMSNorm inputs 2sbh each (×2); q/k/v input 2sbh;
    QKᵀ keeps Q 2sbh and K 2sbh·k/a (grouped-query); softmax output 2as²b (no dropout: the mask
    as²b and the dropout output are gone, the product reads the softmax output); V 2sbh·k/a;
    o_proj input 2sbh; the MLP's input 2sbh, SwiGLU's gate and up 2sbi each and the down
    projection's input 2sbi (GELU's 8sbh + 8sbh of a 4h MLP, and its dropout mask sbh, are gone)."""
    g = kv_heads / a
    attention = 2 * s * b * h * (1 + 1 + g + g + 1) + 2 * a * s * s * b
    mlp = 2 * s * b * h + 3 * 2 * s * b * inner
    return 2 * 2 * s * b * h + attention + mlp


def test_gpt_formula_and_its_llama_form():
    """sbh(34 + 5as/h) is the sum of Korthikanti's terms; the LLaMA form drops dropout and GELU."""
    s, b, h, a = 4096, 1, 4096, 32
    gpt = s * b * h * (34 + 5 * a * s / h)
    terms = 4 * s * b * h + (11 * s * b * h + 5 * a * s * s * b) + 19 * s * b * h
    assert gpt == terms
    # llama2-7b (multi-head): sbh(12 + 4·k/a + 6·i/h) + 2as²b = sbh·32.125 + 2as²b
    i = 11008
    assert korthikanti_llama(s, b, h, a, a, i) == s * b * h * (16 + 6 * i / h) + 2 * a * s * s * b


@pytest.mark.parametrize("name", ["llama2-7b", "llama3-8b"])
def test_activations_per_layer_against_korthikanti(name):
    """The plan's layer, at 16-bit compute on the CPU attention path (the one Korthikanti's
    counting has: scores materialised), equals the LLaMA form plus exactly the terms the README
    explains: float32 residual stream, the norms' statistics, k and v expanded to every query
    head (grouped-query), and with llama-ops that is all."""
    cfg = preset(name)
    s, b, h, a, k, i = (
        4096,
        1,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.intermediate_size,
    )
    bf16_cpu_path = Device("CPU attention, bf16", 0, gpu=False)
    planned = sum(activations.layer(job(name, seq=s, dtype="bfloat16", dev=bf16_cpu_path)).values())
    fp32_residual = 2 * (4 - 2) * s * b * h  # both norm inputs kept in float32
    statistics = 2 * 4 * s * b  # both norms' inverse RMS, float32
    expanded_kv = 2 * 2 * s * b * h * (1 - k / a)  # k and v at a heads, not k
    explained = korthikanti_llama(s, b, h, a, k, i) + fp32_residual + statistics + expanded_kv
    assert planned == explained
    # the GPT formula for the same shape, for the README's table: LLaMA keeps less (no dropout)
    assert planned < s * b * h * (34 + 5 * a * s / h)
    # full recompute: 2sbh (the layer's input, 16-bit) in Korthikanti; float32 here
    full = activations.layer(
        job(name, seq=s, dtype="bfloat16", dev=bf16_cpu_path, recompute="full")
    )
    assert sum(full.values()) == 2 * (2 * s * b * h)


def test_flash_attention_layer_has_no_quadratic_term():
    """On a GPU attention is flash attention: no s² term, its softmax statistics instead."""
    short = sum(
        activations.layer(job("llama2-7b", seq=2048, dtype="bfloat16", dev="H100-80GB")).values()
    )
    long = sum(
        activations.layer(job("llama2-7b", seq=4096, dtype="bfloat16", dev="H100-80GB")).values()
    )
    assert long == 2 * short  # linear in s


def test_states_against_megatrons_18_bytes_per_parameter():
    """Megatron: bf16 weights 2 + fp32 gradients 4 + fp32 master weights 4 + AdamW moments 8 = 18
    bytes per parameter. Here the float32 parameters are the master weights and --amp bf16 casts
    per use: 16 bytes of state (4 + 4 + 8, plus AdamW's two beta powers per tensor), and the
    bf16 copies of the matmul weights (2 bytes) live with each micro-batch in flight."""
    j = job("llama2-7b", "dp1", seq=4096, dtype="bfloat16", dev="H200", micro_batches=1)
    (stage,) = plan_memory(j)
    tensors = stage_tensors(j.config, j.strategy, 0)
    n = sum(t.elements for t in tensors)
    states = stage.bytes["parameters"] + stage.bytes["gradients"] + stage.bytes["optimizer"]
    assert states == 16 * n + 8 * len(tensors)
    copies = activations.chunk_extras(j, 0)["bf16 weight copies"]
    matmul = sum(t.elements for t in tensors if t.matmul)
    assert copies == 2 * matmul
    # per matmul weight, states + the copy one micro-batch holds = Megatron's 18
    assert (16 * matmul + copies) / matmul == 18
    # sharding stages divide the states over dp as ZeRO does
    zero = {z: plan_memory(job("llama2-7b", "dp8", seq=4096, dtype="bfloat16", dev="H200",
                                sharding_stage=z))[0].bytes for z in range(4)}  # fmt: skip
    assert zero[1]["optimizer"] < zero[0]["optimizer"] / 7.9
    assert zero[2]["gradients"] < zero[1]["gradients"] / 7.9
    assert zero[3]["parameters"] < zero[2]["parameters"] / 7.9


# --------------------------------------------------------------------------- schedules
def test_micro_batches_in_flight_follow_paddles_schedules():
    one = {0: 1}
    assert peak_in_flight(Strategy(pp=4, micro_batches=8), 0, one)[0] == 4  # 1F1B: pp − stage
    assert peak_in_flight(Strategy(pp=4, micro_batches=8), 3, {3: 1})[0] == 1
    assert peak_in_flight(Strategy(pp=4, micro_batches=2), 0, one)[0] == 2  # fewer micro-batches
    assert peak_in_flight(Strategy(pp=4, micro_batches=8, schedule="FThenB"), 2, {2: 1})[0] == 8
    assert peak_in_flight(Strategy(micro_batches=8), 0, one)[0] == 1  # accumulation
    # VPP, pp2 × 2 chunks, 4 micro-batches: rounds of 2; rank 0 warms up (2−1)·2 + 2·1 = 4
    # chunk-forwards and holds 5 at its first backward, rank 1 warms up 2 and holds 3
    vpp = Strategy(pp=2, micro_batches=4, schedule="VPP", virtual_pp_degree=2)
    assert peak_in_flight(vpp, 0, {0: 1, 2: 1})[0] == 5
    assert peak_in_flight(vpp, 1, {1: 1, 3: 1})[0] == 3
    # chunks of different sizes: the peak weighs each chunk-micro-batch alive
    held, alive = peak_in_flight(vpp, 0, {0: 10, 2: 1})
    assert sum(alive.values()) <= 5 and held == sum({0: 10, 2: 1}[c] * n for c, n in alive.items())


# ------------------------------------------------------------------- the command, JSON
def test_plan_json_fields():
    code, lines = invoke(["--strategy", "dp2mp2pp2", "--model-config", "llama2-7b", "--seq-len",
                          4096, "--global-batch-size", 64, "--amp", "bf16", "--device",
                          "H100-80GB", "--json"])  # fmt: skip
    assert code == 0, lines
    plan = json.loads("\n".join(lines))
    assert len(plan["ranks"]) == 8 and isinstance(plan["fits"], bool) and plan["step_time_s"] > 0
    for rank in plan["ranks"]:
        assert set(rank) >= {"rank", "coordinates", "parameters", "bytes"}
        assert set(rank["bytes"]) >= {
            "parameters",
            "gradients",
            "optimizer",
            "activations",
            "total",
        }
        assert rank["bytes"]["total"] == sum(v for k, v in rank["bytes"].items() if k != "total")
    assert plan["ranks"][5]["coordinates"] == {"pp": 1, "dp": 0, "mp": 1}
    assert plan["ranks"][0]["parameters"] == 1_750_204_416
    # 1F1B: stage 0 keeps 2 micro-batches in flight, stage 1 one
    assert plan["ranks"][0]["micro_batches_in_flight"] == {"0": 2}
    assert plan["ranks"][4]["micro_batches_in_flight"] == {"1": 1}


def test_plan_text_names_every_term():
    code, lines = invoke(["--strategy", "mp2pp2", "--model-config", "llama3-8b", "--seq-len", 8192,
                          "--global-batch-size", 16, "--amp", "bf16", "--device", "H100-80GB",
                          "--recompute", "--sequence-parallel"])  # fmt: skip
    assert code == 0, lines
    text = "\n".join(lines)
    for term in ("parameters", "gradients", "optimizer", "activations", "logits and loss buffers",
                 "communication buffers", "reserve", "total", "step time", "recompute working set"):  # fmt: skip
        assert term in text, term


def test_a_layout_that_does_not_fit_says_which_rank_and_term():
    code, lines = invoke(
        ["--model-config", "llama2-13b", "--seq-len", 4096, "--device", "A100-40GB"]
    )
    assert code == 0
    assert lines[-1].startswith("does not fit: rank 0 (stage 0) needs ")
    assert "its largest term is the optimizer state" in lines[-1]


def test_auto_ranks_the_layouts_of_64_devices():
    code, lines = invoke(["--strategy", "auto", "--devices", 64, "--model-config", "llama2-7b",
                          "--seq-len", 4096, "--global-batch-size", 512, "--amp", "bf16",
                          "--device", "H100-80GB", "--json"])  # fmt: skip
    assert code == 0, lines[-3:]
    ranking = json.loads("\n".join(lines))
    assert ranking["considered"] > ranking["fitting"] > 10
    times = [layout["step_time_s"] for layout in ranking["layouts"]]
    assert len(times) == 10 and times == sorted(times)
    for layout in ranking["layouts"]:
        assert layout["fits"] and len(layout["ranks"]) == 64
        assert all(
            r["bytes"]["total"] <= layout["device"]["memory_per_rank_bytes"]
            for r in layout["ranks"]
        )
    best = ranking["layouts"][0]["layout"]
    command = ranking["best_command"].split()
    assert command[:3] == [
        "llama-train",
        "--strategy",
        f"dp{best['dp']}mp{best['mp']}pp{best['pp']}",
    ]
    # the command is a run's (its placeholders filled in): click parses it as the run command
    # does, and its options resolve to the layout ranked first
    from llama_train.cli import run_command
    from llama_train.options import resolve
    from llama_train.run_record import resolve as resolve_record

    filled = {"DATA": "data", "OUTPUT": "out", "HOST:PORT": "10.0.0.1:8000", "R": "0"}
    params = run_command.make_context("run", [filled.get(a, a) for a in command[1:]]).params
    flags = {k: v for k, v in params.items() if k not in ("config_file", "print_config")}
    record = resolve_record(resolve({}, flags), preset("llama2-7b"))
    assert record.strategy.to_dict() == {k: best[k] for k in record.strategy.to_dict()}


def test_auto_applies_the_schedule_asked_where_the_layout_allows_it():
    code, lines = invoke(["--strategy", "auto", "--devices", 16, "--model-config", "llama2-7b",
                          "--seq-len", 4096, "--global-batch-size", 32, "--amp", "bf16", "--device",
                          "H100-80GB", "--pp-schedule", "VPP", "--virtual-pp-degree", 2, "--json"])  # fmt: skip
    assert code == 0, lines[-3:]
    layouts = [layout["layout"] for layout in json.loads("\n".join(lines))["layouts"]]
    piped = [layout for layout in layouts if layout["pp"] > 1]
    assert piped and all(layout["schedule"] == "VPP" for layout in piped)
    assert all(layout["virtual_pp_degree"] == 2 for layout in piped)
    assert all(layout["schedule"] == "1F1B" for layout in layouts if layout["pp"] == 1)


def test_auto_on_cpu_tries_only_what_its_paddle_runs():
    code, lines = invoke(["--strategy", "auto", "--devices", 8, "--model-config", "tiny",
                          "--seq-len", 32, "--global-batch-size", 8, "--device", "cpu",
                          "--peak-tflops", 0.3, "--json"])  # fmt: skip
    assert code == 0, lines[-3:]
    for layout in json.loads("\n".join(lines))["layouts"]:
        assert not layout["layout"]["sequence_parallel"] and layout["layout"]["sharding_stage"] == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "H300"], "--device 'H300' is not known (known: H100-80GB, H200"),
        (["--device", "MI300X"], "for another GPU give --device-memory GiB"),
        (["--device", "H100-80GB", "--device-memory", 0], "--device-memory must be > 0, got 0"),
        (["--device", "H100-80GB", "--device-memory", -8], "--device-memory must be > 0, got -8"),
        (["--strategy", "auto", "--device", "H100-80GB"], "--strategy auto needs --devices N"),
        (["--device", "H100-80GB", "--devices", 8], "--devices goes with --strategy auto"),
        ([], "missing option --device (one of H100-80GB"),
        (["--device", "H100-80GB", "--mfu", 0], "--mfu must lie in (0, 1], got 0"),
        (["--device", "V100-32GB", "--amp", "bf16"], "the V100-32GB has no bfloat16 compute"),
        # the run's own refusals, in the run's words
        (["--device", "H100-80GB", "--strategy", "mp3"], "mp3 does not divide num_attention_heads (4)"),
        (["--device", "H100-80GB", "--strategy", "dp2zz"], "--strategy: cannot parse strategy 'dp2zz'"),
        (["--device", "H100-80GB", "--seq-len", 4096], "--seq-len 4096 exceeds the model's max_position_embeddings"),
        (["--device", "cpu", "--amp", "bf16"], "--amp: bfloat16 compute needs a GPU"),
        (["--device", "cpu", "--strategy", "mp2", "--sequence-parallel"], "sequence_parallel needs a GPU"),
        (["--device", "H100-80GB", "--strategy", "auto", "--devices", 8, "--check"], "--check measures one layout"),
        (["--device", "H100-80GB", "--strategy", "auto", "--devices", 8, "--recompute"], "leave --recompute out"),
        (["--device", "cpu", "--strategy", "auto", "--devices", 8, "--amp", "bf16"], "--amp: bfloat16 compute needs a GPU"),
        (["--device", "cpu", "--check", "--to-static"], "--check measures the eager step"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(args, message):
    code, lines = invoke(["--model-config", "tiny", *args])
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines


def test_the_device_list():
    code, lines = invoke(["--device", "list"])
    assert code == 0
    assert [line.split(":")[0] for line in lines] == [
        "H100-80GB", "H200", "A100-80GB", "A100-40GB", "H20", "V100-32GB", "L40S", "cpu"
    ]  # fmt: skip
    assert lines[0].startswith("H100-80GB: 79.6 GiB, dense TFLOP/s bfloat16 989.5, float32 67")


def test_step_time_terms():
    """Compute over the peak at the assumed MFU, the bubble (pp−1)/v of a micro-batch's time, and
    the exposed communication: none for one device, mp's all-reduces on NVLink within a node."""
    one = make_plan(job("llama2-7b", "dp1", seq=4096, dtype="bfloat16", dev="H100-80GB",
                        micro_batches=4), mfu=0.5)  # fmt: skip
    assert one.time.mp == one.time.dp == one.time.pp == one.time.bubble == 0
    tokens = 4 * 4096
    from llama_train.metrics import flops_per_token

    cfg = preset("llama2-7b")
    norms = (2 * cfg.num_hidden_layers + 1) * cfg.hidden_size
    # the MFU line's PaLM count (6N + 12·L·H·Q·T), whose N also holds the norm weights, which
    # multiply nothing: the plan leaves them out
    model = (flops_per_token(cfg, 4096) - 6 * norms) * tokens
    assert one.time.flops_per_rank == model
    assert one.time.compute == pytest.approx(model / (989.5e12 * 0.5))
    piped = make_plan(job("llama2-7b", "pp4", seq=4096, dtype="bfloat16", dev="H100-80GB",
                          micro_batches=8))  # fmt: skip
    micro = piped.time.compute / 8
    assert piped.time.bubble == pytest.approx(3 * micro)
    vpp = make_plan(job("llama2-7b", "pp4", seq=4096, dtype="bfloat16", dev="H100-80GB",
                        micro_batches=8, schedule="VPP", virtual_pp_degree=2))  # fmt: skip
    assert vpp.time.bubble == pytest.approx(1.5 * micro)
    mp = make_plan(job("llama2-7b", "mp8", seq=4096, dtype="bfloat16", dev="H100-80GB"))
    allreduce = 2 * 7 / 8 * 4096 * 4096 * 2 / 450e9
    assert mp.time.mp == pytest.approx((4 * 32 + 1) * allreduce)


# ------------------------------------------------------------------- the pre-launch check
def test_a_layout_that_cannot_fit_the_gpu_is_refused_before_launch(tiny_corpus, tmp_path):
    """The GPU path, on a CPU: the front process takes this machine for one with an H100 (a test
    hook), and llama2-13b in one process does not fit it: one line, exit 2, nothing written."""
    out = tmp_path / "out"
    args = [
        "--model-config",
        "llama2-13b",
        "--data",
        tiny_corpus,
        "--output",
        out,
        "--seq-len",
        4096,
    ]
    result = run_cli(args, env={"LLAMA_TRAIN_FAKE_DEVICE": "H100-80GB"})
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("Error: the plan does not fit: rank 0 (stage 0) needs ")
    assert "but the H100-80GB holds 79.65 GiB; its largest term is the optimizer state" in line
    assert "--no-plan-check launches anyway" in line
    assert not out.exists()


def test_no_plan_check_launches_anyway_and_a_cpu_refuses_nothing(tiny_corpus, tmp_path):
    """A tiny job on a pretended 1 MiB GPU is refused; with --no-plan-check it trains, and
    without a GPU there is no check at all."""
    from conftest import TINY

    args = [*TINY, "--data", tiny_corpus, "--max-steps", 2, "--save-every", 0]
    small = {"LLAMA_TRAIN_FAKE_DEVICE": "H100-80GB:0.001"}
    refused = run_cli([*args, "--output", tmp_path / "a"], env=small)
    assert refused.returncode == 2 and "the plan does not fit" in refused.stderr
    forced = run_cli([*args, "--output", tmp_path / "b", "--no-plan-check"], env=small)
    assert forced.returncode == 0, forced.stderr[-2000:]
    plain = run_cli([*args, "--output", tmp_path / "c"])
    assert plain.returncode == 0, plain.stderr[-2000:]


@pytest.mark.gpu
def test_on_a_gpu_the_plan_refuses_before_launch_and_checks_itself(tiny_corpus, tmp_path):
    """On a real GPU (``pytest -m gpu``): llama2-13b in one process is refused before launch, and
    the plan of a small job on this GPU (flash attention, bf16 casts) is within its budget."""
    import paddle

    if not paddle.is_compiled_with_cuda() or paddle.device.cuda.device_count() == 0:
        pytest.fail("this GPU test needs a CUDA build of Paddle and a GPU", pytrace=False)
    args = ["--model-config", "llama2-13b", "--data", tiny_corpus, "--seq-len", 4096]
    result = run_cli([*args, "--output", tmp_path / "out"])
    assert result.returncode == 2 and "the plan does not fit: rank 0" in result.stderr
    for amp in ("off", "bf16"):
        checked = run_cli(["plan", "--model-config", "tiny", "--seq-len", 64, "--micro-batch-size",
                           2, "--amp", amp, "--check", "--json"], timeout=900)  # fmt: skip
        assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
        assert json.loads(checked.stdout)["within_budget"]


# ------------------------------------------------------------------------ --check on CPU
# Layouts, micro-batch, sequence length, recompute (full, attention), schedules and VPP, both
# kernel sets. Sequence parallelism and sharding reduce-scatter, which Paddle 3.3.1's CPU build
# lacks: --check refuses them here (test_bad_input_is_one_line) and the GPU test checks them.
CHECKED = [
    ("dp1 mb2", ["--micro-batch-size", 2]),
    ("dp2mp2pp2 1F1B", ["--strategy", "dp2mp2pp2", "--global-batch-size", 8]),
    ("mp2 recompute full seq64", ["--strategy", "mp2", "--seq-len", 64, "--micro-batch-size", 2, "--recompute"]),
    ("pp2 FThenB recompute attention mb2", ["--strategy", "pp2", "--pp-schedule", "FThenB", "--micro-batch-size", 2,
                                            "--global-batch-size", 8, "--recompute", "--recompute-granularity", "attention"]),
    ("dp2pp2 VPP2", ["--strategy", "dp2pp2", "--pp-schedule", "VPP", "--virtual-pp-degree", 2, "--global-batch-size", 8]),
    ("pp4 seq48", ["--strategy", "pp4", "--seq-len", 48, "--global-batch-size", 4]),
    ("dp2mp2 mb2 seq64", ["--strategy", "dp2mp2", "--seq-len", 64, "--micro-batch-size", 2, "--global-batch-size", 8]),
    ("mp2pp2 VPP2 recompute full", ["--strategy", "mp2pp2", "--pp-schedule", "VPP", "--virtual-pp-degree", 2,
                                    "--global-batch-size", 4, "--recompute"]),
    ("mp2 plain Paddle", ["--strategy", "mp2", "--micro-batch-size", 2], {"LLAMA_MODEL_NO_OPS": "1"}),
]  # fmt: skip


@pytest.mark.dist
def test_check_is_within_budget_on_cpu_layouts():
    """``plan --check`` trains each layout for real (the launcher, one process per rank): it exits
    0, every rank within budget (states ±1 %, activations ±10 %). On CPU the plan is in fact exact:
    every rank's states and saved activations agree with it to the byte, which is asserted, so
    that any operator that starts saving something else shows here by name (``saved_tensors``)."""
    failures, report = [], []
    for name, args, *env in CHECKED:
        result = run_cli(["plan", "--model-config", "tiny", "--seq-len", 32, *args, "--check",
                          "--json"], timeout=600, env=env[0] if env else None)  # fmt: skip
        if result.returncode != 0:
            failures.append(f"{name}: {result.stderr.strip().splitlines()[-1:]}")
            continue
        checked = json.loads(result.stdout)
        assert checked["within_budget"] and len(checked["ranks"]) == _ranks(args), name
        report.append(f"{name}: " + ", ".join(
            f"rank {r['rank']} activations {r['measured']['activations']:,} B" for r in checked["ranks"]))  # fmt: skip
        for row in checked["ranks"]:
            assert row["parameters"]["predicted"] == row["parameters"]["measured"], (name, row)
            assert row["predicted"] == row["measured"], (name, row)
    print("\n".join(report))
    assert not failures, failures


def _ranks(args) -> int:
    strategy = args[args.index("--strategy") + 1] if "--strategy" in args else "dp1"
    return Strategy.parse(strategy).world_size

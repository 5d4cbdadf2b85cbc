import os

import numpy as np
import paddle
import pytest

from llama_model import LlamaForCausalLM, LlamaModelError, kernel_backend, plan, preset
from llama_model.kernels import causal_attention
from llama_model.loss import causal_lm_loss


def _batch(cfg, b=2, s=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (b, s + 1))
    return paddle.to_tensor(ids[:, :-1]), paddle.to_tensor(ids[:, 1:])


def test_pipeline_stages_compose_to_the_whole_model():
    cfg = preset("tiny")
    whole = LlamaForCausalLM(cfg)
    whole.init_weights(5)
    first = LlamaForCausalLM(cfg, layer_ids=[0], first=True, last=False)
    rest = LlamaForCausalLM(cfg, layer_ids=[1, 2, 3], first=False, last=True)
    for stage in (first, rest):
        stage.init_weights(5)
    names = {n for n, _ in whole.named_parameters()}
    stage_names = [n for s in (first, rest) for n, _ in s.named_parameters()]
    assert sorted(stage_names) == sorted(names)  # full-model names, each exactly once
    assert "llama.layers.2.mlp.down_proj.weight" in dict(rest.named_parameters())
    ids, _ = _batch(cfg)
    np.testing.assert_array_equal(rest(first(ids)).numpy(), whole(ids).numpy())


def test_init_weights_scale_and_norms():
    cfg = preset("tiny", initializer_range=0.05)
    model = LlamaForCausalLM(cfg)
    model.init_weights(0)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    assert np.all(state["llama.layers.1.input_layernorm.weight"] == 1.0)
    assert abs(state["llama.embed_tokens.weight"].std() - 0.05) < 0.002
    assert not np.array_equal(
        state["llama.layers.0.mlp.up_proj.weight"], state["llama.layers.1.mlp.up_proj.weight"]
    )


@pytest.mark.parametrize("recompute", ["full", "attention"])
def test_recompute_gives_the_same_loss_and_gradients(recompute):
    cfg = preset("tiny")
    ids, labels = _batch(cfg)
    results = []
    for mode in (None, recompute):
        model = LlamaForCausalLM(cfg)
        plan.apply_recompute(model, mode)
        model.init_weights(1)
        loss = causal_lm_loss(model(ids), labels)
        loss.backward()
        results.append((float(loss), {n: p.grad.numpy() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == loss_b
    for name in grads_a:
        np.testing.assert_allclose(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_recompute_is_applied_from_outside_and_only_while_training():
    model = LlamaForCausalLM(preset("tiny"))
    with pytest.raises(LlamaModelError, match="recompute must be one of"):
        plan.apply_recompute(model, "selective")
    assert plan.recompute_granularity(model) is None
    plan.apply_recompute(model, "attention")
    assert plan.recompute_granularity(model) == "attention"
    layer = model.llama.layers["0"]
    assert "attention_block" in vars(layer) and "forward" not in vars(layer)
    assert all("attention_block" in vars(layer) for layer in model.llama.layers.values())
    # evaluation runs the plain block: no recompute machinery, the same numbers
    model.init_weights(2)
    model.eval()
    ids, _ = _batch(preset("tiny"))
    with paddle.no_grad():
        plain = LlamaForCausalLM(preset("tiny"))
        plain.init_weights(2)
        plain.eval()
        np.testing.assert_array_equal(model(ids).numpy(), plain(ids).numpy())


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_attention_matches_paddle_sdpa(kv_heads):
    rng = np.random.default_rng(kv_heads)
    q = paddle.to_tensor(rng.standard_normal((2, 9, 4, 8)).astype(np.float32))
    k = paddle.to_tensor(rng.standard_normal((2, 9, kv_heads, 8)).astype(np.float32))
    v = paddle.to_tensor(rng.standard_normal((2, 9, kv_heads, 8)).astype(np.float32))
    want = paddle.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True, enable_gqa=True
    )
    np.testing.assert_allclose(
        causal_attention(q, k, v).numpy(), want.numpy(), rtol=1e-5, atol=1e-6
    )


def test_kernel_backend_is_plain_paddle_without_llama_ops():
    try:
        import llama_ops  # noqa: F401
    except ImportError:
        assert kernel_backend() == "paddle"
    else:
        assert kernel_backend().startswith("llama-ops:")


@pytest.mark.skipif(
    "LLAMA_MODEL_EXPECT_KERNELS" not in os.environ,
    reason="set by the nox sessions, which know whether llama-ops is installed",
)
def test_kernel_backend_is_the_one_the_session_installed():
    # nox runs this suite twice: in llama-model's session (plain Paddle) and in llama-ops' session
    # (fused kernels); a silent fallback there would leave the fused path untested.
    assert kernel_backend().startswith(os.environ["LLAMA_MODEL_EXPECT_KERNELS"])


def test_hf_name_mapping_round_trip():
    from llama_model import state_dict_from_hf, state_dict_to_hf

    model = LlamaForCausalLM(preset("tiny"))
    model.init_weights(0)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    hf = state_dict_to_hf(state)
    assert "model.layers.1.self_attn.k_proj.weight" in hf and "lm_head.weight" in hf
    # transformers stores Linear weights [out, in]: k_proj maps hidden 64 -> 2 kv heads x 16
    assert hf["model.layers.1.self_attn.k_proj.weight"].shape == (32, 64)
    np.testing.assert_array_equal(hf["model.norm.weight"], state["llama.norm.weight"])
    back = state_dict_from_hf(hf)
    assert sorted(back) == sorted(state)
    for k in state:
        np.testing.assert_array_equal(back[k], state[k])


def _cpu_settings_after_import(**env) -> list[str]:
    """(stride flag after import, inside no_strided_views, after it) in a fresh process."""
    import subprocess
    import sys

    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_")
        and k not in ("FLAGS_use_stride_kernel", "LLAMA_MODEL_MALLOC_TUNING")
    }
    code = (
        "import llama_model, paddle; from llama_model import _paddle\n"
        "flag = lambda: paddle.get_flags(['FLAGS_use_stride_kernel'])['FLAGS_use_stride_kernel']\n"
        "seen = [flag()]\n"
        "with _paddle.no_strided_views(): seen.append(flag())\n"
        "print(*seen, flag())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(paddle.is_compiled_with_cuda(), reason="CPU-build settings")
def test_cpu_builds_drop_strided_views_in_the_step():
    # strided views stay on outside the model's step (Paddle's checkpoint code writes through them)
    assert _cpu_settings_after_import() == ["True", "False", "True"]
    assert _cpu_settings_after_import(FLAGS_use_stride_kernel="1") == ["True"] * 3


def test_the_model_trains_the_same_without_strided_views():
    """The setting changes how transposes are stored, not the numbers: one step's gradients equal
    those computed with Paddle's strided views on."""
    config = preset("tiny")
    ids = np.random.default_rng(3).integers(0, config.vocab_size, (2, 17))
    grads = []
    before = paddle.get_flags(["FLAGS_use_stride_kernel"])
    for strided in (False, True):
        paddle.set_flags({"FLAGS_use_stride_kernel": strided})
        try:
            model = LlamaForCausalLM(config)
            model.init_weights(0)
            loss = causal_lm_loss(
                model(paddle.to_tensor(ids[:, :-1])), paddle.to_tensor(ids[:, 1:])
            )
            loss.backward()
            grads.append({n: p.grad.numpy() for n, p in model.named_parameters()})
        finally:
            paddle.set_flags(before)
    for name, grad in grads[0].items():
        np.testing.assert_allclose(grad, grads[1][name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_gradient_norm_reads_the_device_once():
    """The global gradient norm is summed on the device and read back once per call (a GPU waits
    for every read: once per parameter was a sync per parameter per step), and it equals the
    norm computed in numpy from every gradient."""
    from llama_model import ParallelModel, Strategy, count_host_reads

    pm = ParallelModel.build(preset("tiny"), Strategy(), seed=0)
    ids = np.random.default_rng(0).integers(0, pm.config.vocab_size, size=(2, 16))
    pm.forward_backward(ids[:, :-1], ids[:, 1:])
    grads = [p.grad.numpy().astype(np.float64) for p in pm.parameters() if p.grad is not None]
    want = float(np.sqrt(sum((g**2).sum() for g in grads)))

    with count_host_reads() as reads:
        got = pm.grad_norm()
    assert reads == ["numpy"], reads
    assert abs(got - want) <= 1e-12 * want, (got, want)


def test_vpp_chunks_chained_in_pipeline_order_equal_the_whole_model():
    """pp2 × VPP2 on 4 layers: stage 0 holds layers 0 and 2 (chunks 0, 2), stage 1 layers 1 and 3;
    the chunk views, run in pipeline order, give the whole model's logits and gradients (one
    process: the chunks' placement and parameter sharing, without the schedule)."""
    from llama_model import Strategy
    from llama_model.pipeline import PipelineChunk, build_stage

    config = preset("tiny")
    strategy = Strategy(pp=2, schedule="VPP", virtual_pp_degree=2, micro_batches=2)
    stages = [build_stage(config, strategy, s) for s in range(2)]
    assert [s.layer_ids for s in stages] == [[0, 2], [1, 3]]
    for s in stages:
        s.init_weights(0)
    layers = strategy.chunk_layers(config.num_hidden_layers)
    chunks = [
        PipelineChunk(stages[c % 2], layers[c], c == 0, c == strategy.chunks - 1)
        for c in range(strategy.chunks)
    ]
    whole = LlamaForCausalLM(config)
    whole.init_weights(0)
    ids = paddle.to_tensor(np.random.default_rng(0).integers(0, config.vocab_size, size=(2, 16)))
    x = ids
    for chunk in chunks:
        x = chunk(x)
    want = whole(ids)
    np.testing.assert_allclose(x.numpy(), want.numpy(), rtol=0, atol=1e-6)
    x.sum().backward()
    want.sum().backward()
    grads = {n: p.grad.numpy() for s in stages for n, p in s.named_parameters()}
    assert sorted(grads) == sorted(n for n, _ in whole.named_parameters())
    for name, param in whole.named_parameters():
        np.testing.assert_allclose(
            grads[name], param.grad.numpy(), rtol=1e-5, atol=1e-7, err_msg=name
        )


def test_the_inference_primitives_give_the_chosen_ones_numbers():
    """``kernels.for_inference`` calls straight what the model's layers call through dispatch (and
    Paddle's own fused RMSNorm on CPU in float32): the same numbers within fp32 rounding. The floor:
    the largest difference seen over these inputs was 2.9e-6 (256 rows of 256, values ~N(0, 9));
    5e-6 fails when the builtin norm is handed eps=1e-2 instead of 1e-6."""
    from llama_model import kernels
    from llama_model.paddle_compat.kernels import cpu_rms_norm

    ops = kernels.for_inference(paddle.float32, on_cpu=True)
    if cpu_rms_norm() is not None:  # Paddle 3.3.1's CPU wheel has the kernel
        assert ops.rms_norm is cpu_rms_norm()
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal([256, 256]).astype("float32") * 3)
    w = paddle.to_tensor(rng.standard_normal([256]).astype("float32"))
    np.testing.assert_allclose(
        ops.rms_norm(x, w, 1e-6).numpy(), kernels.rms_norm(x, w, 1e-6).numpy(), rtol=0, atol=5e-6
    )
    q = paddle.to_tensor(rng.standard_normal([2, 5, 4, 16]).astype("float32"))
    k = paddle.to_tensor(rng.standard_normal([2, 5, 2, 16]).astype("float32"))
    cos = paddle.to_tensor(rng.standard_normal([5, 16]).astype("float32"))
    sin = paddle.to_tensor(rng.standard_normal([5, 16]).astype("float32"))
    for got, want in zip(ops.apply_rope(q, k, cos, sin), kernels.apply_rope(q, k, cos, sin)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-6)
    gate, up = x[:, :128], x[:, 128:]
    np.testing.assert_allclose(
        ops.swiglu(gate, up).numpy(), kernels.swiglu(gate, up).numpy(), rtol=0, atol=1e-6
    )


def test_the_fused_layers_give_the_composed_forwards_numbers():
    """``kernels.fused_layers()`` (one llama-ops kernel per decoder layer, and one for the final norm
    and head) against the composed ``kernels.plain`` forward: a prefill of left-padded prompts, then
    decode steps over the cache, same logits and caches. Without llama-ops it is refused, saying so.
    The floor: the largest logit difference over these steps was 1.1e-6 (logits ~1); 1e-5 fails
    when the fused layers get eps=1e-2."""
    from llama_model import functional, kernels

    if not os.environ.get("LLAMA_MODEL_EXPECT_KERNELS", "").startswith("llama-ops"):
        assert kernels.fused_layers_available() == "llama-ops is not installed"
        with pytest.raises(RuntimeError, match="llama-ops is not installed"):
            kernels.fused_layers()
        return
    paddle.seed(3)
    model = LlamaForCausalLM(preset("tiny"))
    model.eval()
    composed = functional.ModelWeights(model, detach=True)
    fused = functional.ModelWeights(model, detach=True)
    fused.layers = [functional.FusedLayerWeights.of(w) for w in fused.layers]
    heads = composed.heads
    b, p, capacity = 2, 4, 8
    pads = np.array([0, 3])
    slots = np.arange(capacity)
    real = slots[None, :] >= pads[:, None]
    allowed = real[:, None, :p] & (slots[None, :p, None] >= slots[None, None, :p])
    low = float(np.finfo(np.float32).min)
    prefill_mask = paddle.to_tensor(np.where(allowed, 0.0, low)[:, None, None].astype("float32"))
    ids = paddle.to_tensor(np.random.default_rng(0).integers(3, 250, (b, p)))
    positions = paddle.to_tensor(np.maximum(slots[None, :p] - pads[:, None], 0).reshape(-1))
    shape = [b, heads.num_kv_heads, capacity, heads.head_dim]
    caches = {}
    for name, w, ops in (
        ("plain", composed, kernels.plain),
        ("fused", fused, kernels.fused_layers()),
    ):
        keys = [paddle.zeros(shape) for _ in w.layers]
        values = [paddle.zeros(shape) for _ in w.layers]
        with paddle.no_grad():
            logits, keys, values = functional.forward(
                w, ops, w.cos, w.sin, ids, positions, 0, prefill_mask, keys, values, fresh=True
            )
            steps = [logits.numpy()]
            for t in range(p, capacity):
                seen = np.where(real & (slots[None, :] <= t), 0.0, low).astype("float32")
                mask = np.broadcast_to(
                    seen[:, None, None], (b, heads.num_kv_heads, heads.group, capacity)
                )
                logits, keys, values = functional.forward(
                    w, ops, w.cos, w.sin, paddle.to_tensor([[5], [6]]),
                    paddle.to_tensor(t - pads), t, paddle.to_tensor(np.ascontiguousarray(mask)),
                    keys, values,
                )  # fmt: skip
                steps.append(logits.numpy())
        caches[name] = (steps, [k.numpy() for k in keys])
    for got, want in zip(caches["fused"][0], caches["plain"][0]):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    for got, want in zip(caches["fused"][1], caches["plain"][1]):
        # Real slots only: a padding query sees no key, and the two spread its attention over
        # different slots (harmless: no real query ever attends a padding slot).
        np.testing.assert_allclose(
            got.transpose(0, 2, 1, 3)[real], want.transpose(0, 2, 1, 3)[real], rtol=0, atol=1e-5
        )

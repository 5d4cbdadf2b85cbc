"""``--init-from``: a run starts from a model written by transformers itself (or exported from it in
the PaddleNLP layout, in bf16, or a llama-train checkpoint), under several layouts.

For each run: the loss of step 1 (computed before the update) equals transformers' loss on the same
global batch, and after that one step at learning rate 0 (weight decay 0) the checkpoint, exported
by llama-ckpt-tools, holds exactly the input's bits. Every rank reads only its shards; the
digest recorded in run_config.json and trainer_state.json names the input.
"""

import json
import os
import pickle
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import losses, run_cli

from llama_ckpt import export, open_source

# Step-1 loss vs transformers: the difference measured over dp1, mp2, pp2, dp2mp2pp2, the paddle
# layout and bf16 weights was at most 2.3e-7 (loss ≈ 6.31; the summation order differs per layout).
# The bound is 1e-5: rounding the weights to bf16 moves the loss by 7.3e-4, and the bf16 run,
# compared with the float32 reference, fails it (asserted below).
LOSS_TOL = 1e-5

HF_CONFIG = dict(
    vocab_size=384, hidden_size=64, intermediate_size=176, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)  # fmt: skip
ZERO_LR = ["--lr", "0", "--min-lr", "0", "--weight-decay", "0", "--warmup-steps", "0"]


def _hf_model(bf16_weights: bool = False):
    """The reference model (float32 compute); ``bf16_weights``: its weights rounded to bf16 (what a
    bf16 save of it holds; its rotary buffer stays float32 as transformers builds it)."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**HF_CONFIG))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:  # larger than the default 0.02: the loss depends visibly on each weight
                p.normal_(0.0, 0.1)
            if bf16_weights:
                p.copy_(p.to(torch.bfloat16).float())
    return model.eval()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A sharded hf directory written by ``save_pretrained`` (safetensors, ~100 kB shards)."""
    path = tmp_path_factory.mktemp("init") / "hf"
    _hf_model().save_pretrained(path, safe_serialization=True, max_shard_size="100KB")
    assert len(list(path.glob("model-*-of-*.safetensors"))) > 3
    return path


def _train_once(tiny_corpus, out, init, strategy, *extra, reads=None):
    """One step from ``init``; ``reads``: a directory where each rank records the bytes it read
    of the weights (``LLAMA_TRAIN_RECORD_INIT_READS``)."""
    # The default micro-batch of one sample: under mp2 and pp2 (dp1) a batch axis of size one
    # reaches llama-ops' kernels, which once broke the first backward there.
    args = ["--init-from", init, "--tokenizer", "byte", "--data", tiny_corpus, "--output", out,
            "--strategy", strategy, "--seq-len", "32", "--global-batch-size", "8", "--max-steps", "1", "--eval-every", "0", *ZERO_LR, *extra]  # fmt: skip
    env = {"LLAMA_TRAIN_RECORD_INIT_READS": str(reads)} if reads else None
    result = run_cli(args, timeout=400, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# What a rank may read beyond its tensors' bytes and the files' headers and index (/proc/self/io
# counts every read of the process): for each safetensors file, the rest of the one buffer that
# Python's buffered reader fetches with its header (io.DEFAULT_BUFFER_SIZE, 8 KiB, at most), and
# 1 KiB for the counter's own reads of /proc/self/io. Measured under every layout here (10 shards
# on a 4 KiB-block tmpfs): 36,910 bytes beyond the headers and index, all in the opening.
BUFFER_SLACK, COUNTER_SLACK = 8 << 10, 1 << 10
_REPLICATED = ("model.embed_tokens.weight", "input_layernorm.weight",
               "post_attention_layernorm.weight", "model.norm.weight")  # fmt: skip


def _shares(directory, strategy: str) -> tuple[dict[int, int], int, int]:
    """Each rank's share of the tensor bytes of an hf directory (its stage's tensors; of each
    the 1/mp slice, the embedding and the norms whole: they are replicated over mp), the bytes
    of the headers and the index every rank reads with their slack, and the bytes of all
    tensors."""
    import struct

    from llama_model import Strategy

    s = Strategy.parse(strategy)
    layers = s.layer_split(HF_CONFIG["num_hidden_layers"])
    tensors, headers = {}, (directory / "model.safetensors.index.json").stat().st_size
    for shard in directory.glob("*.safetensors"):
        with open(shard, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        headers += 8 + n + BUFFER_SLACK
        header.pop("__metadata__", None)
        tensors.update({k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()})

    def stage_of(name: str) -> int:
        if name.startswith("model.layers."):
            layer = int(name.split(".")[2])
            return next(i for i, r in enumerate(layers) if layer in r)
        return 0 if name.startswith("model.embed_tokens") else s.pp - 1

    shares = {}
    for rank in range(s.world_size):
        stage, _, _ = s.coordinates(rank)
        shares[rank] = sum(
            size if name.endswith(_REPLICATED) else size // s.mp
            for name, size in tensors.items()
            if stage_of(name) == stage
        )
    return shares, headers + COUNTER_SLACK, sum(tensors.values())


def _assert_reads_bounded(reads, directory, strategy: str) -> None:
    """Each rank read at least its share of the tensor bytes, at most that plus the headers and
    index and their slack, and, where the layout splits the model, less than the tensors of the
    whole model."""
    from llama_model import Strategy

    shares, headers, whole = _shares(directory, strategy)
    recorded = {}
    for path in reads.glob("rank-*.json"):
        record = json.loads(path.read_text())
        recorded[record["rank"]] = record["opening"] + record["filling"]
    assert sorted(recorded) == sorted(shares), recorded
    for rank, read in recorded.items():
        assert shares[rank] <= read <= shares[rank] + headers, (rank, read, shares[rank], headers)
        if Strategy.parse(strategy).mp * Strategy.parse(strategy).pp > 1:
            assert read < whole, (rank, read, whole)


def _reference_loss(out, bf16_weights: bool = False) -> float:
    """transformers' mean token loss on the run's first global batch."""
    import torch

    from llama_train import RunRecord
    from llama_train.data import TrainData

    input_ids, labels = TrainData(RunRecord.read(str(out / "run_config.json")), rank=0).batch(0)
    with torch.no_grad():
        logits = _hf_model(bf16_weights)(torch.as_tensor(np.asarray(input_ids))).logits
        return float(
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).double(),
                torch.as_tensor(np.asarray(labels)).reshape(-1),
                ignore_index=-100,
            )
        )


def _tensors(path) -> dict[str, np.ndarray]:
    source = open_source(str(path))
    return {name: source.read(name) for name in source.names()}


def _assert_same_bits(exported, original):
    a, b = _tensors(exported), _tensors(original)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), f"{name} changed"


def _check_run(out, source_dir, tmp_path, reference, layout="hf", dtype=None):
    loss = losses(out)[1]
    assert abs(loss - reference) <= LOSS_TOL, (loss, reference)
    step = out / "checkpoints" / "step-00000001"
    exported = tmp_path / f"export-{out.name}"
    export(str(step), str(exported), layout=layout, dtype=dtype)
    _assert_same_bits(exported, source_dir)
    recorded = json.loads((out / "run_config.json").read_text())["resolved"]["init_source"]
    assert recorded == json.loads((step / "trainer_state.json").read_text())["init_from"]
    assert recorded["layout"] == layout and recorded["digest"].startswith("sha256:")
    return loss


@pytest.mark.dist
@pytest.mark.parametrize("strategy", ["dp1", "mp2", "pp2", "dp2mp2pp2"])
def test_hf_directory_under_each_layout(strategy, hf_dir, tiny_corpus, tmp_path):
    out = tmp_path / strategy
    result = _train_once(tiny_corpus, out, hf_dir, strategy, reads=tmp_path / "reads")
    assert f"starting from the weights of {hf_dir} (hf layout)" in result.stdout
    _check_run(out, hf_dir, tmp_path, _reference_loss(out))
    # every rank reads only its shards: its stage's tensors, of those its mp slice
    _assert_reads_bounded(tmp_path / "reads", hf_dir, strategy)


@pytest.mark.dist
def test_paddle_layout_bf16_and_a_checkpoint(hf_dir, tiny_corpus, tmp_path):
    # The PaddleNLP layout ([in, out] Linear weights), exported from the transformers directory.
    paddle_dir = tmp_path / "paddle-layout"
    export(str(hf_dir), str(paddle_dir), layout="paddle", max_shard_size=60_000)
    out = tmp_path / "paddle"
    _train_once(tiny_corpus, out, paddle_dir, "mp2")
    reference = _reference_loss(out)
    _check_run(out, paddle_dir, tmp_path, reference, layout="paddle")

    # bf16 weights, written by transformers: converted exactly to float32, exported back in bf16.
    bf16_dir = tmp_path / "hf-bf16"
    import torch

    _hf_model().to(torch.bfloat16).save_pretrained(
        bf16_dir, safe_serialization=True, max_shard_size="50KB"
    )
    out_bf16 = tmp_path / "bf16"
    _train_once(tiny_corpus, out_bf16, bf16_dir, "pp2")
    bf16_loss = _check_run(
        out_bf16, bf16_dir, tmp_path, _reference_loss(out_bf16, bf16_weights=True), dtype="bfloat16"
    )
    assert abs(bf16_loss - reference) > 10 * LOSS_TOL  # the bound tells bf16 weights from fp32

    # One .pdparams file (merged from that run's checkpoint), its config given: slices read from
    # the pickle's array spans, through the restricted unpickler.
    from llama_ckpt import merge

    merge(str(out / "checkpoints" / "step-00000001"), str(tmp_path / "model.pdparams"))
    out_pd = tmp_path / "pdparams"
    _train_once(tiny_corpus, out_pd, tmp_path / "model.pdparams", "mp2",
                "--model-config", str(hf_dir / "config.json"))  # fmt: skip
    assert abs(losses(out_pd)[1] - reference) <= LOSS_TOL

    # A llama-train checkpoint (the run directory: its latest), weights only: step 1 again.
    out_ckpt = tmp_path / "from-checkpoint"
    result = _train_once(tiny_corpus, out_ckpt, out, "dp2")
    assert "(paddle layout)" in result.stdout
    assert abs(losses(out_ckpt)[1] - reference) <= LOSS_TOL
    state = json.loads(
        (out_ckpt / "checkpoints" / "step-00000001" / "trainer_state.json").read_text()
    )
    assert state["step"] == 1 and state["init_from"]["format"] == "distcp"


@pytest.mark.dist
def test_resume_ignores_init_from(hf_dir, tiny_corpus, tmp_path):
    out = tmp_path / "run"
    _train_once(tiny_corpus, out, hf_dir, "dp1")
    result = _train_once(tiny_corpus, out, hf_dir, "dp1", "--resume", "auto", "--max-steps", "2")
    assert "--init-from ignored: resuming from" in result.stdout
    assert "resumed from" in result.stdout and sorted(losses(out)) == [1, 2]
    record = json.loads((out / "run_config.json").read_text())
    assert record["resolved"]["init_source"] is None
    # The checkpoint keeps saying where the run's weights came from.
    state = json.loads((out / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state["init_from"]["path"] == str(hf_dir)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _edit_index(directory, change):
    path = directory / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    change(index["weight_map"])
    path.write_text(json.dumps(index))


def test_bad_weights_are_refused_before_launch(hf_dir, tiny_corpus, tmp_path):
    """One line, exit 2, nothing written, no process started (the dp2mp2pp2 layout would start 8)."""
    from llama_train.cli import main

    def refused(init, *extra, message):
        out = tmp_path / "out"
        args = ["--init-from", init, "--tokenizer", "byte", "--data", tiny_corpus, "--output", out,
                "--strategy", "dp2mp2pp2", "--seq-len", "32", "--global-batch-size", "8",
                "--max-steps", "1", *extra]  # fmt: skip
        result = CliRunner().invoke(main, [str(a) for a in args])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert lines[0].startswith("Error: --init-from") or lines[0].startswith("Error: "), lines
        assert message in lines[0], lines[0]
        assert not out.exists()

    def copy(name):
        target = tmp_path / name
        shutil.copytree(hf_dir, target)
        return target

    shards = sorted(p.name for p in hf_dir.glob("model-*-of-*.safetensors"))
    no_shard = copy("no-shard")
    os.remove(no_shard / shards[1])
    refused(no_shard, message=f"{shards[1]} is missing (named by")

    outside = copy("outside")
    _edit_index(outside, lambda m: m.update({"lm_head.weight": f"../hf/{shards[0]}"}))
    refused(outside, message="a file outside")

    truncated = copy("truncated")
    shard = truncated / shards[2]
    with open(shard, "r+b") as fh:
        fh.truncate(os.path.getsize(shard) - 100)
    refused(truncated, message="is truncated")

    config = json.loads((hf_dir / "config.json").read_text())
    bigger = copy("shape")
    (bigger / "config.json").write_text(json.dumps({**config, "intermediate_size": 192}))
    refused(
        bigger, message="gate_proj.weight has shape [176, 64] but config.json implies [192, 64]"
    )

    deeper = copy("deeper")
    (deeper / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 6}))
    refused(deeper, message="tensor model.layers.4.input_layernorm.weight is missing (18 missing:")

    shallower = copy("shallower")
    (shallower / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    refused(shallower, message="is not a parameter of the model config.json describes (18 such:")

    # Names neither hf nor paddle: the layout cannot be told, and --init-layout says what they are.
    from safetensors.numpy import save_file

    odd = tmp_path / "odd"
    odd.mkdir()
    save_file({"weights.0": np.zeros(4, np.float32)}, str(odd / "model.safetensors"))
    shutil.copy(hf_dir / "config.json", odd)
    refused(odd, message="cannot tell the layout from the tensor names (weights.0)")
    refused(
        odd,
        "--init-layout",
        "hf",
        message="tensor model.embed_tokens.weight is missing (39 missing",
    )

    small = copy("small-vocab")
    (small / "config.json").write_text(json.dumps({**config, "vocab_size": 200}))
    refused(small, message="the tokenizer has 259 tokens but the model's vocab_size is 200")

    refused(hf_dir, "--model-config", "bench-t", message="(hidden_size: init-from 64, asked 256)")
    no_config = copy("no-config")
    os.remove(no_config / "config.json")
    refused(no_config, message="no config.json in")

    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    with open(hostile / "model.pdparams", "wb") as fh:
        pickle.dump({"llama.norm.weight": _Exploit(marker)}, fh, protocol=4)
    shutil.copy(hf_dir / "config.json", hostile)
    refused(hostile, message="refusing to load")
    assert not marker.exists()


def test_a_directory_with_safetensors_and_a_pdparams_is_refused(tiny_corpus, tmp_path):
    """Both formats in one model directory: llama-ckpt-tools would read the safetensors and never
    say so. Refused in one line naming both, and how to choose: the file itself as --init-from
    (one of each), or the .pdparams moved out (sharded safetensors)."""
    from safetensors.numpy import save_file

    from llama_train.cli import main

    def refused(init):
        args = ["--init-from", init, "--tokenizer", "byte", "--data", tiny_corpus, "--output",
                tmp_path / "out", "--seq-len", "32", "--max-steps", "1"]  # fmt: skip
        result = CliRunner().invoke(main, [str(a) for a in args])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert not (tmp_path / "out").exists()
        return lines[0]

    both = tmp_path / "both"
    both.mkdir()
    (both / "config.json").write_text(json.dumps(HF_CONFIG))
    save_file({"lm_head.weight": np.zeros((2, 2), np.float32)}, str(both / "model.safetensors"))
    with open(both / "model.pdparams", "wb") as fh:
        pickle.dump({"lm_head.weight": np.zeros((2, 2), np.float32)}, fh, protocol=4)
    assert refused(both) == (
        f"Error: --init-from {both} holds both safetensors weights (model.safetensors) and "
        f".pdparams weights (model.pdparams): pass the file to start from: --init-from "
        f"{both}/model.safetensors or --init-from {both}/model.pdparams (its config.json is "
        "read all the same)"
    )
    # the file itself is taken as it is (and then checked: these weights are not the model's)
    assert "holds both" not in refused(both / "model.safetensors")

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps(HF_CONFIG))
    for i in (1, 2):
        save_file(
            {f"w{i}": np.zeros(2, np.float32)}, str(sharded / f"model-0000{i}-of-00002.safetensors")
        )
    (sharded / "model.pdparams").write_bytes((both / "model.pdparams").read_bytes())
    assert refused(sharded) == (
        f"Error: --init-from {sharded} holds both safetensors weights (model-00001-of-00002"
        ".safetensors, model-00002-of-00002.safetensors) and .pdparams weights (model.pdparams): "
        f"move model.pdparams out of it to start from the safetensors, or pass --init-from "
        f"{sharded}/model.pdparams"
    )

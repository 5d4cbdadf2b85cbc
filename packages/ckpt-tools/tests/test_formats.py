"""safetensors I/O against the safetensors library, bf16 rounding against torch, shard planning."""

from __future__ import annotations

import numpy as np
import pytest

from llama_ckpt import dtypes
from llama_ckpt.errors import CheckpointError
from llama_ckpt.export import OutTensor, parse_size, split_by_count, split_by_size
from llama_ckpt.safetensors_io import SafetensorsWriter, read_header, read_tensor


def test_writer_output_reads_with_the_library(tmp_path):
    import torch
    from safetensors import safe_open

    rng = np.random.default_rng(0)
    tensors = [
        ("w", dtypes.dtype("float32"), rng.standard_normal((3, 5)).astype(np.float32)),
        ("h", dtypes.dtype("bfloat16"), np.array([0x3F80, 0xC000, 0x7FC0], dtype=np.uint16)),
        ("i", dtypes.dtype("int64"), np.arange(4)),
        ("m", dtypes.dtype("bool"), np.array([True, False, True])),
    ]
    path = tmp_path / "x.safetensors"
    w = SafetensorsWriter(
        str(path), [(n, d, a.shape) for n, d, a in tensors], metadata={"format": "pt"}
    )
    for n, _, a in tensors:
        w.write(n, a)
    w.close()
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert torch.equal(f.get_tensor("w"), torch.from_numpy(tensors[0][2]))
        assert f.get_tensor("h")[:2].tolist() == [1.0, -2.0] and f.get_tensor("h")[2].isnan()
        assert f.get_tensor("h").view(torch.int16).numpy().view(np.uint16).tolist() == [
            0x3F80,
            0xC000,
            0x7FC0,
        ]
        assert f.get_tensor("i").tolist() == [0, 1, 2, 3]
        assert f.get_tensor("m").tolist() == [True, False, True]


def test_reader_reads_library_output(tmp_path):
    import torch
    from safetensors.torch import save_file

    t = {
        "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": torch.tensor([1.5, -3.0], dtype=torch.bfloat16),
    }
    save_file(t, tmp_path / "x.safetensors")
    entries, _ = read_header(str(tmp_path / "x.safetensors"))
    got = {e.name: (e.dtype.name, read_tensor(str(tmp_path / "x.safetensors"), e)) for e in entries}
    assert got["a"][0] == "float32" and got["a"][1].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert got["b"][0] == "bfloat16"
    assert got["b"][1].tolist() == t["b"].view(torch.int16).numpy().view(np.uint16).tolist()


def test_bf16_rounding_matches_torch():
    import torch

    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            rng.standard_normal(10000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 10000),
            np.array(
                [0.0, -0.0, np.inf, -np.inf, 3.4e38, 1e-45, 1.00390625, 1.01171875],
                dtype=np.float32,
            ),
        ]
    )
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(dtypes.float32_to_bf16_bits(x), ref)
    nan = dtypes.float32_to_bf16_bits(np.array([np.nan], dtype=np.float32))
    assert np.isnan(dtypes.bf16_bits_to_float32(nan))[0]
    assert np.array_equal(
        dtypes.bf16_bits_to_float32(ref),
        torch.from_numpy(ref.view(np.int16)).view(torch.bfloat16).float().numpy(),
    )


def _t(name, nbytes):
    return OutTensor(name, name, dtypes.dtype("uint8"), (nbytes,))


def test_split_by_size_follows_hugging_face_rule():
    ts = [_t("a", 40), _t("b", 40), _t("c", 30), _t("d", 150), _t("e", 10)]
    assert [[t.name for t in s] for s in split_by_size(ts, 100)] == [
        ["a", "b"],
        ["c"],
        ["d"],
        ["e"],
    ]


def test_split_by_count_balances_bytes_and_fills_every_shard():
    ts = [_t(str(i), n) for i, n in enumerate([10, 10, 10, 10, 60])]
    assert [[t.name for t in s] for s in split_by_count(ts, 2)] == [["0", "1", "2", "3"], ["4"]]
    ts = [_t(str(i), n) for i, n in enumerate([100, 1, 1])]
    assert [len(s) for s in split_by_count(ts, 3)] == [1, 1, 1]
    with pytest.raises(CheckpointError):
        split_by_count(ts, 4)


def test_parse_size():
    assert (
        parse_size("5GB") == 5 * 10**9
        and parse_size("2GiB") == 2 * 2**30
        and parse_size("100") == 100
    )
    with pytest.raises(CheckpointError):
        parse_size("five gigs")


@pytest.mark.parametrize(
    ("option", "value"), [("--rtol", "inf"), ("--atol", "nan"), ("--atol", "-1e-3")]
)
def test_verify_refuses_a_tolerance_that_is_not_a_finite_number(tmp_path, option, value):
    from helpers import cli
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "a.safetensors"))
    save_file({"w": np.array([0, 1e30], np.float32)}, str(tmp_path / "b.safetensors"))
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    r = cli("verify", a, b, option, value)  # inf would call these two equal
    shown = {"inf": "inf", "nan": "nan", "-1e-3": "-0.001"}[value]
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr == f"Error: {option[2:]} must be a finite number >= 0, got {shown}\n"
    assert cli("verify", a, b, "--rtol", "1e-3").exit_code == 1  # they differ

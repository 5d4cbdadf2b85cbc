import numpy as np
import pytest

from llama_model import LlamaModelError, Strategy, preset


@pytest.mark.parametrize("text", ["dp2mp2pp2", "pp2dp2mp2", "mp2-pp2-dp2", "DP2xMP2xPP2"])
def test_parse_any_order(text):
    s = Strategy.parse(text)
    assert (s.dp, s.mp, s.pp, s.world_size) == (2, 2, 2, 8)
    assert s.mesh_shape == [2, 2, 2]


def test_missing_axes_are_one():
    s = Strategy.parse("mp4", micro_batches=8, schedule="FThenB")
    assert (s.dp, s.mp, s.pp, s.micro_batches, s.schedule) == (1, 4, 1, 8, "FThenB")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty strategy"),
        ("dp2tp2", "cannot parse"),
        ("dp2dp2", "names dp twice"),
        ("dp0", "≥ 1"),
        ("dp", "cannot parse"),
        ("mp-2", "cannot parse"),  # a separator inside an axis token
        ("dp2mp3xx", "cannot parse"),  # trailing separators
        ("dp2--mp2", "cannot parse"),
        ("x dp2", "cannot parse"),
    ],
)
def test_bad_strings(text, message):
    with pytest.raises(LlamaModelError, match=message):
        Strategy.parse(text)


@pytest.mark.parametrize(
    ("text", "changes", "message"),
    [
        ("mp3", {}, "mp3 does not divide num_attention_heads"),
        ("mp4", {}, "mp4 does not divide num_key_value_heads (2)"),
        ("mp2", {"vocab_size": 255}, "vocab_size (255)"),
        ("pp8", {}, "pp8 exceeds num_hidden_layers"),
        ("pp2", {"tie_word_embeddings": True}, "tie_word_embeddings with pp > 1"),
    ],
)
def test_validate_against_config(text, changes, message):
    with pytest.raises(LlamaModelError) as err:
        Strategy.parse(text).validate(preset("tiny", **changes))
    assert message in str(err.value)


def test_world_size_and_batch_mismatch():
    s = Strategy.parse("dp2mp2", micro_batches=4)
    with pytest.raises(LlamaModelError, match="needs 4 processes but the world size is 8"):
        s.validate(preset("tiny"), world_size=8)
    with pytest.raises(LlamaModelError, match="global batch 12 is not divisible by dp2 × 4"):
        s.validate(preset("tiny"), world_size=4, global_batch=12)


def test_layer_split_even_and_configured():
    assert [list(r) for r in Strategy(pp=3).layer_split(8)] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert [list(r) for r in Strategy(pp=2, stage_layers=(1, 3)).layer_split(4)] == [[0], [1, 2, 3]]
    with pytest.raises(LlamaModelError, match="sum to 5"):
        Strategy(pp=2, stage_layers=(2, 3)).validate(preset("tiny"))
    with pytest.raises(LlamaModelError, match="2 entries but pp is 3"):
        Strategy(pp=3, stage_layers=(2, 2))


def test_coordinates_follow_the_pp_dp_mp_mesh():
    s = Strategy.parse("dp2mp2pp2")
    mesh = s.build_mesh()  # the job's ProcessMesh, the strategy's one owner of it
    assert mesh.dim_names == ["pp", "dp", "mp"] and mesh.shape == [2, 2, 2]
    ranks = np.array(mesh.process_ids).reshape(mesh.shape)
    for rank in range(8):
        assert s.coordinates(rank) == tuple(int(c[0]) for c in np.where(ranks == rank))


def test_gpu_only_options_need_their_axis():
    with pytest.raises(LlamaModelError, match="needs dp > 1"):
        Strategy(mp=2, sharding_stage=1)
    with pytest.raises(LlamaModelError, match="needs mp > 1"):
        Strategy(dp=2, sequence_parallel=True)


def test_vpp_chunks_are_interleaved_over_the_stages():
    s = Strategy(pp=2, schedule="VPP", virtual_pp_degree=2, micro_batches=4)
    assert s.chunks == 4 and s.stage_chunks(0) == [0, 2] and s.stage_chunks(1) == [1, 3]
    assert [list(r) for r in s.chunk_layers(8)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert s.layer_split(8) == [[0, 1, 4, 5], [2, 3, 6, 7]]
    s.validate(preset("tiny"))  # 4 layers, 4 chunks of one


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pp": 1, "schedule": "VPP", "virtual_pp_degree": 2}, "needs pp > 1"),
        ({"pp": 2, "schedule": "VPP", "virtual_pp_degree": 1}, "needs virtual_pp_degree ≥ 2"),
        ({"pp": 2, "schedule": "1F1B", "virtual_pp_degree": 2}, "needs the VPP schedule"),
        (
            {"pp": 2, "schedule": "VPP", "virtual_pp_degree": 2, "micro_batches": 3},
            "micro-batches (3) to be a multiple of pp2",
        ),
        (
            {"pp": 2, "schedule": "VPP", "virtual_pp_degree": 2, "micro_batches": 2,
             "stage_layers": (1, 3)},
            "stage_layers applies to FThenB/1F1B",
        ),
    ],
)  # fmt: skip
def test_vpp_refusals(fields, message):
    with pytest.raises(LlamaModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Strategy(**fields)


def test_vpp_chunks_must_split_the_layers():
    s = Strategy(pp=2, schedule="VPP", virtual_pp_degree=3, micro_batches=2)
    with pytest.raises(LlamaModelError, match="6 chunks do not split num_hidden_layers"):
        s.validate(preset("tiny"))


def test_to_dict_round_trips_through_json():
    import json

    s = Strategy.parse("dp2pp2", micro_batches=4, schedule="VPP", virtual_pp_degree=2)
    again = Strategy.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s and again.to_dict()["virtual_pp_degree"] == 2
    split = Strategy(pp=2, stage_layers=(3, 1))
    assert Strategy.from_dict(json.loads(json.dumps(split.to_dict()))).stage_layers == (3, 1)
    with pytest.raises(LlamaModelError, match="unknown strategy fields: bogus"):
        Strategy.from_dict({**s.to_dict(), "bogus": 1})

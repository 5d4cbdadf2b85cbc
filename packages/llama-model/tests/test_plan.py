import paddle.distributed as dist

from llama_model import LlamaForCausalLM, preset
from llama_model.plan import data_placements, placements, style_of

# Written out by hand from the Megatron/PaddleNLP tensor-parallel recipe, weights [in, out].
EXPECTED = {
    "llama.embed_tokens.weight": "replicate",
    "llama.layers.3.input_layernorm.weight": "replicate",
    "llama.layers.3.self_attn.q_proj.weight": "colwise",
    "llama.layers.3.self_attn.k_proj.weight": "colwise",
    "llama.layers.3.self_attn.v_proj.weight": "colwise",
    "llama.layers.3.self_attn.o_proj.weight": "rowwise",
    "llama.layers.3.post_attention_layernorm.weight": "replicate",
    "llama.layers.3.mlp.gate_proj.weight": "colwise",
    "llama.layers.3.mlp.up_proj.weight": "colwise",
    "llama.layers.3.mlp.down_proj.weight": "rowwise",
    "llama.norm.weight": "replicate",
    "lm_head.weight": "colwise",
}


def test_plan_covers_every_parameter_as_expected():
    names = [n for n, _ in LlamaForCausalLM(preset("tiny")).named_parameters()]
    for name in names:
        generic = name.replace(".0.", ".3.").replace(".1.", ".3.").replace(".2.", ".3.")
        assert style_of(name) == EXPECTED[generic], name
    assert {
        n.replace(".0.", ".3.").replace(".1.", ".3.").replace(".2.", ".3.") for n in names
    } == set(EXPECTED)


def test_placements_on_the_stage_mesh():
    col = placements("llama.layers.0.mlp.up_proj.weight", ["dp", "mp"])
    row = placements("llama.layers.0.mlp.down_proj.weight", ["dp", "mp"])
    rep = placements("llama.norm.weight", ["dp", "mp"])
    assert col == [dist.Replicate(), dist.Shard(1)]
    assert row == [dist.Replicate(), dist.Shard(0)]
    assert rep == [dist.Replicate(), dist.Replicate()]
    assert data_placements(["dp", "mp"]) == [dist.Shard(0), dist.Replicate()]

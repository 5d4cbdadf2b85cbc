import pytest

from llama_model import LlamaConfig, preset
from llama_train import flops_per_token


def test_flops_per_token_counts_matmul_weights_and_attention():
    cfg = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    # Counted by hand from the shapes: q,o 64x64; k,v 64x32 (2 kv heads of 16); gate,up,down 64x160;
    # two norms of 64 per layer; final norm; LM head 64x1000. The input embedding is a lookup.
    per_layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 160 + 2 * 64
    n = 3 * per_layer + 64 + 64 * 1000
    attention = 12 * 3 * 4 * 16 * 256  # 12·L·H·Q·T at T = 256
    assert flops_per_token(cfg, 256) == 6 * n + attention


def test_tied_embedding_counts_once_as_the_head():
    cfg = preset("tiny", tie_word_embeddings=True)
    untied = preset("tiny")
    assert flops_per_token(untied, 64) - flops_per_token(cfg, 64) == pytest.approx(0.0)

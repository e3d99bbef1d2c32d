"""``recipe=`` / ``shrink=tiny`` / ``model_config=``: resolving Bridge recipes, shrinking them, their HF configs offline.

Everything here runs in-process on the real Bridge recipe functions (their model providers are built from the
``config.json`` files the project carries, through transformers' own hub-cache lookup); the end-to-end training runs
are in ``test_recipe_train.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nemo_smartpt.bridge.shrink import ShrinkError, Sizes, tiny_sizes

CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU answers of a machine without CUDA")


def _ratios(s: Sizes) -> tuple[float, float, float]:
    return (
        s.ffn_hidden_size / s.hidden_size,
        s.num_attention_heads / s.num_query_groups,
        s.num_attention_heads * s.kv_channels / s.hidden_size,
    )


@pytest.mark.parametrize(
    "published, expected",
    [
        # Llama 3.2 1B: FFN 4x, GQA 4, head dim x heads = hidden.
        (Sizes(16, 2048, 8192, 32, 8, 64), Sizes(2, 128, 512, 8, 2, 16)),
        # Qwen 3 0.6B: FFN 3x, GQA 2, attention twice as wide as the model (16 heads x 128 on a 1024 width).
        (Sizes(28, 1024, 3072, 16, 8, 128), Sizes(2, 128, 384, 8, 4, 32)),
        # Llama 3 8B: FFN 3.5x.
        (Sizes(32, 4096, 14336, 32, 8, 128), Sizes(2, 128, 448, 8, 2, 16)),
        # GQA 8 (Llama 3 70B-like): still two KV groups, so TP=2 can split them.
        (Sizes(80, 8192, 28672, 64, 8, 128), Sizes(2, 128, 448, 16, 2, 8)),
    ],
)
def test_tiny_sizes_keep_the_ffn_gqa_and_attention_width_ratios(published, expected):
    tiny = tiny_sizes(published)
    assert tiny == expected
    for kept, original in zip(_ratios(tiny), _ratios(published)):
        assert kept == pytest.approx(original, rel=0.05)
    assert tiny.kv_channels % 2 == 0 and tiny.num_query_groups % 2 == 0  # RoPE halves; TP=2 splits the groups


def test_tiny_sizes_refuse_heads_that_do_not_fill_their_groups():
    with pytest.raises(ShrinkError, match="num_query_groups=5"):
        tiny_sizes(Sizes(4, 512, 2048, 8, 5, 64))


def test_recipe_hf_requests_are_the_ids_the_recipe_asks_transformers_for():
    from megatron.bridge.recipes.gpt.h100.vanilla_gpt import vanilla_gpt_pretrain_1gpu_h100_bf16_config
    from megatron.bridge.recipes.llama.h100 import llama3 as llama_module
    from megatron.bridge.recipes.qwen.h100 import qwen3 as qwen_module

    from nemo_smartpt.bridge.hf_config import HFRequest, recipe_hf_requests

    assert recipe_hf_requests(llama_module.llama32_1b_pretrain_1gpu_h100_bf16_config) == [
        HFRequest("meta-llama/Llama-3.2-1B")
    ]
    # A module constant id with a pinned commit.
    pinned = recipe_hf_requests(qwen_module.qwen3_8b_pretrain_4gpu_h100_bf16_config)
    assert pinned == [HFRequest(qwen_module._QWEN3_8B_MODEL_ID, qwen_module._QWEN3_8B_MODEL_REVISION)]
    assert recipe_hf_requests(vanilla_gpt_pretrain_1gpu_h100_bf16_config) == []


def test_offline_hub_cache_serves_a_local_config_to_transformers_under_the_hub_id():
    from huggingface_hub import constants
    from transformers import AutoConfig

    from nemo_smartpt.bridge.hf_config import HFRequest, carried_config, offline_hub_cache

    published = json.loads((carried_config("Qwen/Qwen3-8B") / "config.json").read_text())
    commit = "b968826d9c46dd6066d109eabc6255188de91218"
    before = (constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE)
    configs = {
        HFRequest("meta-llama/Llama-3.2-1B"): carried_config("meta-llama/Llama-3.2-1B"),
        HFRequest("Qwen/Qwen3-8B", commit): carried_config("Qwen/Qwen3-8B"),
    }
    with offline_hub_cache(configs) as root:
        llama = AutoConfig.from_pretrained("meta-llama/Llama-3.2-1B")
        qwen = AutoConfig.from_pretrained("Qwen/Qwen3-8B", revision=commit)
    assert (llama.hidden_size, llama.num_key_value_heads, llama.tie_word_embeddings) == (2048, 8, True)
    assert (qwen.intermediate_size, qwen.head_dim) == (published["intermediate_size"], published["head_dim"])
    assert (constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE) == before  # the user's cache and mode come back
    assert not Path(root).exists()


def _cli(*args: str) -> int:
    from nemo_smartpt.cli import main

    return main(["train", *args])


def test_unknown_recipe_fails_in_one_line_with_the_closest_names(capsys):
    assert _cli("recipe=llama32_1b_pretrain_1gpu_h100_config") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "unknown recipe 'llama32_1b_pretrain_1gpu_h100_config'" in err
    assert "closest: llama32_1b_pretrain_1gpu_h100_bf16_config" in err


def test_unknown_shrink_level_fails_in_one_line(capsys):
    assert _cli("shrink=small") == 2
    assert capsys.readouterr().err.strip() == "smartpt train: shrink must be one of none, tiny, got 'small'"


@CPU_ONLY
def test_gpu_recipe_on_cpu_without_shrink_names_shrink_tiny(capsys):
    assert _cli("recipe=qwen3_600m_pretrain_1gpu_h100_bf16_config") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "add shrink=tiny" in err, err


@CPU_ONLY
@pytest.mark.parametrize("shrink", ["none", "tiny"])
def test_hybrid_mamba_recipe_on_cpu_is_gpu_only(capsys, shrink):
    assert _cli("recipe=nemotron_nano_12b_v2_pretrain_4gpu_h100_bf16_config", f"shrink={shrink}") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "hybrid Mamba" in err and "GPU" in err, err


@CPU_ONLY
def test_uncarried_config_offline_fails_at_once_naming_model_config(capsys, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert _cli("recipe=llama32_3b_pretrain_1gpu_h100_bf16_config", "shrink=tiny") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "meta-llama/Llama-3.2-3B" in err and "model_config=DIR" in err, err


@CPU_ONLY
def test_model_config_dir_builds_the_recipe_from_that_directory(tmp_path, monkeypatch):
    """A user's local copy of a config the project does not carry (Llama 3.2 3B's published sizes)."""
    from huggingface_hub import constants

    from nemo_smartpt.bridge.recipe import recipe_config

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    llama_3b = json.loads((Path("conf/hf/meta-llama/Llama-3.2-1B/config.json")).read_text())
    llama_3b.update(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24)
    llama_3b.update(head_dim=128)
    (tmp_path / "llama3b").mkdir()
    (tmp_path / "llama3b" / "config.json").write_text(json.dumps(llama_3b))
    cfg = recipe_config(
        "llama32_3b_pretrain_1gpu_h100_bf16_config",
        str(tmp_path / "run"),
        vocab_size=257,
        shrink="tiny",
        model_config=str(tmp_path / "llama3b"),
    )
    m = cfg.model
    # GQA 3 (24 heads / 8 groups) -> 2 groups x 3 heads; FFN 8192/3072 of 128 -> 344; attention width 1 -> head dim 22.
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size) == (2, 128, 344)
    assert (m.num_attention_heads, m.num_query_groups, m.kv_channels) == (6, 2, 22)
    assert m.rotary_base == 500000.0 and m.normalization == "RMSNorm" and m.hf_model_id is None


@CPU_ONLY
def test_shrunk_recipes_build_the_recipes_architecture_with_local_cpu_layers(single_process_group):
    from megatron.core.process_groups_config import ProcessGroupCollection

    from nemo_smartpt.bridge.recipe import recipe_config

    built = {}
    for name in ("qwen3_600m_pretrain_1gpu_h100_bf16_config", "llama3_8b_pretrain_2gpu_h100_bf16_config"):
        cfg = recipe_config(name, "unused", vocab_size=257, shrink="tiny")
        provider = cfg.model
        assert (cfg.dist.distributed_backend, cfg.mixed_precision, cfg.optimizer.use_distributed_optimizer) == (
            "gloo",
            None,
            False,
        )
        provider.vocab_size, provider.should_pad_vocab = 257, True  # what Bridge's setup sets from the tokenizer
        provider.finalize()
        provider._pg_collection = ProcessGroupCollection.use_mpu_process_groups()
        built[name] = (provider, provider.provide())

    qwen_cfg, qwen = built["qwen3_600m_pretrain_1gpu_h100_bf16_config"]
    llama_cfg, llama = built["llama3_8b_pretrain_2gpu_h100_bf16_config"]
    for cfg, model in ((qwen_cfg, qwen), (llama_cfg, llama)):
        layer = model.decoder.layers[0]
        assert isinstance(layer.input_layernorm, torch.nn.RMSNorm)  # RMSNorm kept, as torch's (no TE/Apex)
        assert isinstance(layer.pre_mlp_layernorm, torch.nn.RMSNorm)
        heads, groups, kv, hidden = cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels, cfg.hidden_size
        assert layer.self_attention.linear_qkv.weight.shape == ((heads + 2 * groups) * kv, hidden)  # GQA layout
        assert layer.mlp.linear_fc1.weight.shape == (2 * cfg.ffn_hidden_size, hidden)  # gated (SwiGLU)
        assert cfg.activation_func is torch.nn.functional.silu and cfg.position_embedding_type == "rope"
        assert model.embedding.word_embeddings.weight.shape[0] == 384  # 257 padded to a multiple of 128 x TP=1
        assert next(model.parameters()).dtype == torch.float32
    # QK-norm: Qwen 3 normalises queries and keys per head (RMSNorm over the head dim); Llama does not.
    q_norm = qwen.decoder.layers[0].self_attention.q_layernorm
    assert isinstance(q_norm, torch.nn.RMSNorm) and q_norm.normalized_shape == (qwen_cfg.kv_channels,)
    assert not isinstance(llama.decoder.layers[0].self_attention.q_layernorm, torch.nn.RMSNorm)
    # Embedding tying as published: Qwen 3 0.6B ties input and output embeddings, Llama 3 8B does not.
    assert qwen.share_embeddings_and_output_weights and qwen.output_layer.weight is None
    assert not llama.share_embeddings_and_output_weights and llama.output_layer.weight.shape == (384, 128)
    assert (qwen.rotary_pos_emb.inv_freq[1].item(), llama.rotary_pos_emb.inv_freq[1].item()) == pytest.approx(
        (1e6 ** (-2 / qwen_cfg.kv_channels), 5e5 ** (-2 / llama_cfg.kv_channels)), rel=1e-5
    )


@CPU_ONLY
def test_module_function_recipes_resolve_like_exported_names():
    from nemo_smartpt.bridge.recipe import recipe_config
    from nemo_smartpt.bridge.recipe_lookup import RecipeError

    cfg = recipe_config(
        "megatron.bridge.recipes.llama.h100.llama3:llama32_1b_pretrain_1gpu_h100_bf16_config", "run", shrink="tiny"
    )
    assert (cfg.model.hidden_size, cfg.model.ffn_hidden_size, cfg.model.num_query_groups) == (128, 512, 2)
    with pytest.raises(RecipeError, match="has no function 'no_such_config'"):
        recipe_config("megatron.bridge.recipes.llama.h100.llama3:no_such_config", "run", shrink="tiny")

"""The memory plan against numbers computed by hand."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from tasks.train.plan import ModelShape, activation_bytes, memory_plan, model_shape, preset_config  # noqa: E402


def test_parameter_count_of_a_small_config_matches_the_hand_count():
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    v, i_v, layers_v, image, patch = 8, 16, 1, 16, 8
    V, h, i, layers, heads, kv_heads = 50, 12, 20, 2, 4, 2
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=v, intermediate_size=i_v, num_hidden_layers=layers_v, num_attention_heads=2,
            image_size=image, patch_size=patch, vision_use_head=False,
        ),
        text_config=Qwen2Config(
            vocab_size=V, hidden_size=h, intermediate_size=i, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads,
        ),
        vision_feature_select_strategy="full",
    )  # fmt: skip
    patches = (image // patch) ** 2
    siglip = (
        3 * patch * patch * v + v  # patch embedding (conv weight + bias)
        + patches * v  # position embedding
        + layers_v * (2 * 2 * v + 4 * (v * v + v) + (v * i_v + i_v) + (i_v * v + v))  # 2 LayerNorms, q/k/v/o, MLP
        + 2 * v  # post LayerNorm
    )
    projector = (v * h + h) + (h * h + h)
    kv = h // heads * kv_heads
    decoder_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h  # q (bias), k, v (bias), o, SwiGLU, 2 RMSNorms
    qwen2 = V * h + layers * decoder_layer + h + V * h  # embeddings, layers, final norm, untied lm_head
    image_newline = h
    shape = model_shape(config)
    assert shape.largest_layer_parameters == decoder_layer
    assert shape.parameters == siglip + projector + qwen2 + image_newline
    assert shape.patches_per_tile == patches


SHAPE = ModelShape(
    parameters=1_000_000_000, largest_layer_parameters=10_000_000, text_layers=10, text_hidden=1000,
    vocab_size=100_000, vision_layers=4, vision_hidden=500, patches_per_tile=100,
)  # fmt: skip


def test_activations_with_and_without_checkpointing():
    # b=2, s=1000, 3 tiles: text tokens 2000, vision tokens 2·3·100 = 600.
    without = activation_bytes(SHAPE, batch_size=2, seq_len=1000, gradient_checkpointing=False, image_tiles=3)
    text, vision, logits = 10 * 34 * 2000 * 1000, 4 * 34 * 600 * 500, 10 * 2000 * 100_000
    assert without == text + vision + logits == 2_720_800_000
    with_ = activation_bytes(SHAPE, batch_size=2, seq_len=1000, gradient_checkpointing=True, image_tiles=3)
    text = 10 * 2 * 2000 * 1000 + 34 * 2000 * 1000
    vision = 4 * 2 * 600 * 500 + 34 * 600 * 500
    assert with_ == text + vision + logits == 2_120_600_000


def test_plan_shards_states_but_not_activations():
    rows = memory_plan(SHAPE, batch_size=2, seq_len=1000, gpu_memory_gb=20, gpu_counts=(1, 4), image_tiles=3)
    by = {(r.strategy, r.gpus): r for r in rows}
    assert len(rows) == 6
    ddp = by["ddp", 4]  # 1e9 params × (4 + 4 + 8) bytes, unsharded
    assert (ddp.weights_gb, ddp.gradients_gb, ddp.optimizer_gb) == (4.0, 4.0, 8.0)
    assert ddp.total_gb == pytest.approx(16 + 2.1206) and not ddp.fits  # 18.12 GB > 0.9 × 20 GB
    fsdp = by["fsdp", 4]  # states / 4, plus two gathered layers of 1e7 fp32 parameters (0.08 GB)
    assert fsdp.weights_gb == pytest.approx(1.0 + 0.08) and fsdp.gradients_gb == 1.0 and fsdp.optimizer_gb == 2.0
    assert fsdp.total_gb == pytest.approx(4.08 + 2.1206) and fsdp.fits
    assert by["deepspeed-zero3", 4] == fsdp.__class__(**{**fsdp.__dict__, "strategy": "deepspeed-zero3"})
    assert by["fsdp", 1].total_gb == ddp.total_gb


def test_presets_reproduce_the_papers_setting():
    small = model_shape(preset_config("llava-onevision-qwen2-0.5b"))
    large = model_shape(preset_config("llava-onevision-qwen2-7b"))
    assert round(small.parameters / 1e9, 2) == 0.89 and round(large.parameters / 1e9, 2) == 8.03
    one_24gb = memory_plan(small, batch_size=1, seq_len=4096, gpu_memory_gb=24, gpu_counts=(1,))
    assert all(row.fits for row in one_24gb)
    on_80gb = {(r.strategy, r.gpus): r.fits for r in memory_plan(large, batch_size=1, seq_len=4096, gpu_memory_gb=80, gpu_counts=(1, 8))}
    assert on_80gb == {
        ("ddp", 1): False, ("ddp", 8): False, ("fsdp", 1): False, ("fsdp", 8): True,
        ("deepspeed-zero3", 1): False, ("deepspeed-zero3", 8): True,
    }  # fmt: skip

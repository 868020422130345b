"""A memory plan for full SFT before launching: bytes per GPU under each strategy and GPU count.

Parameters are counted exactly by building the model from its config on the
meta device (no weights are read or allocated). Bytes per parameter follow
the training loop in tasks.train.finetune: fp32 master weights (4), fp32
gradients (4) and AdamW's two fp32 moments (8) — 16 bytes per parameter, as
in ZeRO (Rajbhandari et al. 2020, §3.1) — with bf16 only inside autocast.

- ddp: every GPU holds all of it.
- fsdp / deepspeed-zero3: weights, gradients and optimizer states are sharded
  over the GPUs (FULL_SHARD = ZeRO stage 3), plus the gathered weights of the
  unit being computed and the next one prefetched (two decoder layers, fp32).

Activations are an estimate per GPU and micro-batch, after Korthikanti et al.
2022 ("Reducing Activation Recomputation in Large Transformer Models", §4.1):
34·s·b·h bytes per transformer layer in 16-bit precision; the 5·a·s²·b term
for attention scores is left out because SDPA / flash attention never stores
them. With gradient checkpointing a layer keeps only its 16-bit input
(2·s·b·h) and one layer at a time is recomputed in full. The logits add
s·b·V·10 bytes (bf16 logits, their fp32 copy for the loss, and log-softmax).
The vision tower is counted the same way over its patch tokens (anyres: up
to `image_tiles` tiles per image). A plan "fits" when the total stays under
90% of the GPU memory: the rest goes to the CUDA context, the allocator's
fragmentation and communication buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Strategy = Literal["ddp", "fsdp", "deepspeed-zero3"]
STRATEGIES: tuple[Strategy, ...] = ("ddp", "fsdp", "deepspeed-zero3")
BYTES_WEIGHTS = 4  # fp32 master weights
BYTES_GRADIENTS = 4  # fp32 gradients
BYTES_OPTIMIZER = 8  # AdamW exp_avg + exp_avg_sq, fp32
USABLE_FRACTION = 0.9
GB = 1e9

#: Published dimensions of LLaVA-OneVision (SigLIP-so400m/14 at 384 px, 26 layers used; Qwen2 LM).
PRESETS: dict[str, dict] = {
    "llava-onevision-qwen2-0.5b": {
        "text": dict(
            vocab_size=152000, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
        ),
        "tie_word_embeddings": True,
    },
    "llava-onevision-qwen2-7b": {
        "text": dict(
            vocab_size=152128, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False,
        ),
        "tie_word_embeddings": False,
    },
}  # fmt: skip
SIGLIP_SO400M = dict(
    hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
    image_size=384, patch_size=14, vision_use_head=False,
)  # fmt: skip


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs from a model config."""

    parameters: int
    largest_layer_parameters: int  # one LM decoder layer: the unit FSDP / ZeRO-3 gathers at a time
    text_layers: int
    text_hidden: int
    vocab_size: int
    vision_layers: int
    vision_hidden: int
    patches_per_tile: int


@dataclass(frozen=True)
class PlanRow:
    strategy: Strategy
    gpus: int
    weights_gb: float
    gradients_gb: float
    optimizer_gb: float
    activations_gb: float
    total_gb: float
    fits: bool


def preset_config(name: str):
    """A LlavaOnevisionConfig with a preset's published dimensions (no hub access needed)."""
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)} (or pass a checkpoint directory)")
    preset = PRESETS[name]
    return LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**SIGLIP_SO400M),
        text_config=Qwen2Config(**preset["text"]),
        vision_feature_select_strategy="full",
        tie_word_embeddings=preset["tie_word_embeddings"],
    )


def model_config(model: str | Path):
    """A preset name, or a checkpoint directory whose config.json is read (weights are not)."""
    if str(model) in PRESETS:
        return preset_config(str(model))
    from transformers import AutoConfig

    path = Path(model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; pass a checkpoint directory or one of {sorted(PRESETS)}")
    return AutoConfig.from_pretrained(str(path))


def model_shape(config) -> ModelShape:
    """Exact parameter counts from building the model on the meta device."""
    import torch
    from transformers import LlavaOnevisionForConditionalGeneration

    with torch.device("meta"):
        model = LlavaOnevisionForConditionalGeneration(config)
    layer = model.model.language_model.layers[0]
    vision, text = config.vision_config, config.text_config
    return ModelShape(
        parameters=sum(p.numel() for p in model.parameters()),
        largest_layer_parameters=sum(p.numel() for p in layer.parameters()),
        text_layers=text.num_hidden_layers,
        text_hidden=text.hidden_size,
        vocab_size=text.vocab_size,
        vision_layers=vision.num_hidden_layers,
        vision_hidden=vision.hidden_size,
        patches_per_tile=(vision.image_size // vision.patch_size) ** 2,
    )


def activation_bytes(
    shape: ModelShape, *, batch_size: int, seq_len: int, gradient_checkpointing: bool, image_tiles: int
) -> int:
    """Activation estimate of one micro-batch on one GPU (formulas in the module docstring)."""

    def stack(tokens: int, hidden: int, layers: int) -> int:
        full_layer = 34 * tokens * hidden
        if gradient_checkpointing:
            return layers * 2 * tokens * hidden + full_layer
        return layers * full_layer

    text = stack(batch_size * seq_len, shape.text_hidden, shape.text_layers)
    vision = stack(batch_size * image_tiles * shape.patches_per_tile, shape.vision_hidden, shape.vision_layers)
    logits = 10 * batch_size * seq_len * shape.vocab_size
    return text + vision + logits


def memory_plan(
    shape: ModelShape,
    *,
    batch_size: int,
    seq_len: int,
    gpu_memory_gb: float,
    gpu_counts: tuple[int, ...] = (1, 2, 4, 8),
    gradient_checkpointing: bool = True,
    image_tiles: int = 10,
) -> list[PlanRow]:
    """One row per (strategy, GPU count): GB per GPU of each part, and whether it fits."""
    if batch_size <= 0 or seq_len <= 0 or gpu_memory_gb <= 0 or not gpu_counts or min(gpu_counts) <= 0:
        raise ValueError("batch_size, seq_len, gpu_memory_gb and every GPU count must be > 0")
    activations = activation_bytes(
        shape, batch_size=batch_size, seq_len=seq_len, gradient_checkpointing=gradient_checkpointing,
        image_tiles=image_tiles,
    )  # fmt: skip
    rows = []
    for strategy in STRATEGIES:
        for gpus in gpu_counts:
            shards = 1 if strategy == "ddp" else gpus
            weights = shape.parameters * BYTES_WEIGHTS / shards
            if shards > 1:  # the gathered unit being computed and the next one prefetched
                weights += 2 * shape.largest_layer_parameters * BYTES_WEIGHTS
            gradients = shape.parameters * BYTES_GRADIENTS / shards
            optimizer = shape.parameters * BYTES_OPTIMIZER / shards
            total = weights + gradients + optimizer + activations
            rows.append(
                PlanRow(
                    strategy, gpus, weights / GB, gradients / GB, optimizer / GB, activations / GB, total / GB,
                    fits=total <= USABLE_FRACTION * gpu_memory_gb * GB,
                )  # fmt: skip
            )
    return rows

"""A tiny, randomly initialised LLaVA-OneVision checkpoint built from config.

The stand-in for a real LLaVA-OneVision checkpoint in the demo and tests (no
model hub here): same classes (SigLIP vision tower, 2-layer MLP projector,
Qwen2 language model), same anyres tiling and ChatML tokens, ~5·10^5 parameters
instead of ~10^9, so it trains, saves, reloads and generates on CPU in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.models.llava_onevision import LlavaOnevisionImageProcessorPil

from tasks.train.data import (
    CHAT_TEMPLATE,
    END_OF_TURN,
    IMAGE_TOKEN,
    SYSTEM_PROMPT,
    TURN_START,
    ImageOnlyLlavaOnevisionProcessor,
)

PAD_TOKEN = "<|endoftext|>"  # Qwen2's pad token
VIDEO_TOKEN = "<video>"  # unused, but LlavaOnevisionConfig needs a video token id


@dataclass(frozen=True)
class TinySizes:
    """Dimensions of the tiny model; the defaults give ~5·10^5 parameters (most in the embeddings)."""

    vocab_size: int = 3000  # byte symbols + specials + phrase merges (fewer when the corpus runs out of pairs)
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 128
    vision_hidden: int = 32
    vision_layers: int = 1
    vision_heads: int = 2
    vision_intermediate: int = 64
    # A 32×32 tile cut into 8×8 patches gives 16 tokens per tile. Pinpoints are
    # multiples of the tile so anyres cuts whole tiles; an image uses at most
    # 1 + 4 tiles → 16 (whole image) + 8×8 (unpadded grid) + 8 (row newlines) = 88 tokens.
    tile: int = 32
    patch: int = 8
    grid_pinpoints: tuple[tuple[int, int], ...] = field(default=((32, 32), (32, 64), (64, 32), (64, 64)))
    max_positions: int = 2048


def _train_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    # Byte-level BPE like Qwen2's: every string encodes without an unknown token.
    specials = [PAD_TOKEN, TURN_START, END_OF_TURN, IMAGE_TOKEN, VIDEO_TOKEN]
    backend = Tokenizer(models.BPE())
    # Merges may cross word boundaries (no regex split), so the recurring
    # phrases of FEID answers ("Its valence is ", "Active action units: ")
    # become single tokens: a model this small then learns the answer's
    # structure in a few hundred steps instead of looping on one phrase. The
    # length cap keeps tokens phrase-sized rather than whole memorised answers.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        max_token_length=32,
    )
    # The chat scaffolding is part of every example, so it gets merges too.
    scaffold = [f"system\n{SYSTEM_PROMPT}\nuser\nassistant\n"]
    backend.train_from_iterator([*scaffold, *corpus], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=END_OF_TURN,  # generation stops at the end of the assistant turn
        pad_token=PAD_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_llava(
    out_dir: Path, corpus: Iterable[str], *, seed: int = 0, sizes: TinySizes = TinySizes()
) -> Path:
    """Train a BPE tokenizer on `corpus`, build a random tiny LLaVA-OneVision, save both.

    out_dir then holds config.json, model.safetensors, generation_config.json,
    tokenizer files, processor_config.json (processor + image processor) and
    preprocessor_config.json, loadable with LlavaOnevisionForConditionalGeneration
    .from_pretrained and tasks.train.data.load_processor.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = _train_tokenizer(corpus, sizes.vocab_size)
    pinpoints = [list(point) for point in sizes.grid_pinpoints]
    for point in pinpoints:
        if point[0] % sizes.tile or point[1] % sizes.tile:
            raise ValueError(f"TinySizes.grid_pinpoints {point} must be multiples of the tile size {sizes.tile}.")
    vision = SiglipVisionConfig(
        hidden_size=sizes.vision_hidden,
        intermediate_size=sizes.vision_intermediate,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads,
        image_size=sizes.tile,
        patch_size=sizes.patch,
        vision_use_head=False,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=sizes.text_hidden,
        intermediate_size=sizes.text_intermediate,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads,
        num_key_value_heads=sizes.text_kv_heads,
        max_position_embeddings=sizes.max_positions,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_index=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        # SigLIP has no CLS token: "default" would drop a real patch feature.
        vision_feature_select_strategy="full",
        image_grid_pinpoints=pinpoints,
    )
    model = LlavaOnevisionForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": sizes.tile, "width": sizes.tile},
        image_grid_pinpoints=pinpoints,  # must equal the model config's, or token counts disagree
    )
    processor = ImageOnlyLlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(sizes.tile // sizes.patch) ** 2,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )
    model.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir

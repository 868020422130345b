"""Batched greedy answers from a (fine-tuned) LLaVA-OneVision checkpoint.

Prompts go through tasks.train.data.encode_prompt, the same chat pieces and
tokenisation as training, so the model sees at inference exactly the prefix
it learned to answer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from transformers import LlavaOnevisionForConditionalGeneration

from tasks.train.data import END_OF_TURN, ImageOnlyLlavaOnevisionProcessor, collate, encode_prompt, load_processor


def load_for_inference(
    model_dir: Path, *, device: str | None = None
) -> tuple[LlavaOnevisionForConditionalGeneration, ImageOnlyLlavaOnevisionProcessor]:
    """Model (eval mode; bf16 on CUDA, fp32 on CPU) and processor from one checkpoint directory.

    Takes a full model directory: output_dir/final of finetune(), a base
    checkpoint, or a full-SFT checkpoint-N (LoRA checkpoint-N dirs hold only an
    adapter; use final, where it is merged).
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        is_adapter = (model_dir / "adapter_config.json").is_file()
        hint = " It holds a LoRA adapter: load output_dir/final instead." if is_adapter else ""
        raise FileNotFoundError(f"{model_dir} has no config.json, so it is not a full model directory.{hint}")
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(str(model_dir), dtype=dtype).to(target)
    model.eval()
    return model, load_processor(model_dir)


@torch.inference_mode()
def generate_answers(
    model: LlavaOnevisionForConditionalGeneration,
    processor: ImageOnlyLlavaOnevisionProcessor,
    images: list[bytes | Image.Image],
    questions: list[str],
    *,
    max_new_tokens: int = 512,
    batch_size: int = 8,
) -> list[str]:
    """One greedy answer per (image, question), in input order, without the end-of-turn token."""
    if len(images) != len(questions):
        raise ValueError(f"got {len(images)} images but {len(questions)} questions; pass one question per image.")
    tokenizer = processor.tokenizer
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_of_turn
    answers: list[str] = []
    for start in range(0, len(images), batch_size):
        prompts = [
            encode_prompt(image, question, processor)
            for image, question in zip(images[start : start + batch_size], questions[start : start + batch_size])
        ]
        # Left padding: every row's last prompt token sits at the same position,
        # so new tokens are appended right after it in all rows.
        batch = collate(prompts, pad_token_id=pad_id, padding_side="left")
        batch.pop("labels")
        batch = {key: value.to(model.device) for key, value in batch.items()}
        batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=end_of_turn,
            pad_token_id=pad_id,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]  # (B, ≤ max_new_tokens)
        answers.extend(text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return answers

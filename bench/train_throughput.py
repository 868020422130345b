"""Training throughput of tasks.train.finetune on a synthetic FEID export.

    python bench/train_throughput.py                      # tiny random model, CPU or GPU
    python bench/train_throughput.py --preset llava-onevision-qwen2-0.5b --image-size 384 --batch-size 8
    python bench/train_throughput.py --model /ckpt/llava-onevision-qwen2-0.5b-ov --image-size 384

--preset builds a LLaVA-OneVision of that size from its published dimensions
(tasks.train.plan.PRESETS) with random weights: no hub access, the same
FLOPs per token as the real checkpoint (its tokenizer is a small BPE, which
changes token counts per word, not the cost per token).

Prints tokens/s (input tokens, image placeholders included) and samples/s over
the steps after --warmup-steps, all measured in this one run. With CUDA it also
prints model FLOPs utilisation, MFU = 6·N·tokens/s / peak FLOP/s (the 6·N
FLOPs per token of forward + backward from Kaplan et al. 2020, eq. 2.1;
attention FLOPs are left out, and the vision tower's patch tokens are counted
as LM tokens, so this is an estimate). N counts all parameters, frozen ones
included, since frozen layers still run forward and backward.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from transformers import AutoConfig, LlavaOnevisionForConditionalGeneration  # noqa: E402

from tasks.train.data import CHAT_TEMPLATE, ImageOnlyLlavaOnevisionProcessor  # noqa: E402
from tasks.train.finetune import StepLog, TrainConfig, finetune  # noqa: E402
from tasks.train.plan import PRESETS, preset_config  # noqa: E402
from tasks.train.tiny import IMAGE_TOKEN, VIDEO_TOKEN, _train_tokenizer, build_tiny_llava  # noqa: E402

QUESTION = "What expression, valence/arousal and action units does this face show?"
WORDS = "the face shows happiness with AU6 and AU12 active valence 0.7 arousal 0.4 because cheeks rise".split()


def write_export(export_dir: Path, examples: int, image_size: int, answer_words: int) -> list[str]:
    """A synthetic FEID export: coloured faces drawn with Pillow, fixed-length answers."""
    (export_dir / "images").mkdir(parents=True)
    lines, texts = [], [QUESTION]
    for index in range(examples):
        colour = ((37 * index) % 256, (91 * index) % 256, (151 * index) % 256)
        image = Image.new("RGB", (image_size, image_size), colour)
        margin = image_size // 5
        ImageDraw.Draw(image).ellipse((margin, margin, image_size - margin, image_size - margin), fill=(240, 200, 170))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        name = f"images/{hashlib.sha256(buffer.getvalue()).hexdigest()}.png"
        (export_dir / name).write_bytes(buffer.getvalue())
        answer = " ".join(WORDS[(index + i) % len(WORDS)] for i in range(answer_words))
        texts.append(answer)
        conversation = [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": answer}]
        lines.append(json.dumps({"id": f"bench-{index}", "image": name, "conversations": conversation}))
    (export_dir / "feid.jsonl").write_text("\n".join(lines) + "\n")
    return texts


def build_preset(out_dir: Path, corpus: list[str], preset: str) -> Path:
    """A random-weight LLaVA-OneVision of a preset's size, with a processor (384 px tiles, anyres up to 2×2)."""
    from transformers.models.llava_onevision import LlavaOnevisionImageProcessorPil

    tokenizer = _train_tokenizer(corpus, 3000)
    config = preset_config(preset)
    config.image_token_index = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    config.video_token_index = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    tile = config.vision_config.image_size
    pinpoints = [[tile * rows, tile * cols] for rows in (1, 2) for cols in (1, 2)]
    config.image_grid_pinpoints = pinpoints
    config.text_config.eos_token_id = tokenizer.eos_token_id
    config.text_config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    LlavaOnevisionForConditionalGeneration(config).save_pretrained(out_dir)
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints)
    processor = ImageOnlyLlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tokenizer, vision_feature_select_strategy="full",
        num_image_tokens=(tile // config.vision_config.patch_size) ** 2, chat_template=CHAT_TEMPLATE,
    )  # fmt: skip
    image_processor.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def parameter_count(model_dir: Path) -> int:
    # Built on the meta device: counts parameters without allocating them.
    config = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        model = LlavaOnevisionForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="LLaVA-OneVision checkpoint dir; default: a tiny random one")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="random-weight model of this size, built from config")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=48, help="square image side in pixels")
    parser.add_argument("--answer-words", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accumulation", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps, warm-up included")
    parser.add_argument("--warmup-steps", type=int, default=3, help="steps left out of the timing")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="peak bf16 dense TFLOP/s (H100 SXM: 989)")
    args = parser.parse_args()
    if args.steps <= args.warmup_steps:
        parser.error("--steps must exceed --warmup-steps")

    with tempfile.TemporaryDirectory(prefix="seke-train-bench-") as scratch:
        root = Path(scratch)
        texts = write_export(root / "export", args.examples, args.image_size, args.answer_words)
        if args.preset:
            model_dir = build_preset(root / "preset", texts, args.preset)
        else:
            model_dir = args.model or build_tiny_llava(root / "tiny", texts)
        config = TrainConfig(
            learning_rate=1e-5,
            max_steps=args.steps,
            batch_size=args.batch_size,
            grad_accumulation=args.grad_accumulation,
            use_lora=args.lora,
            save_steps=args.steps + 1,  # no intermediate checkpoints inside the timed loop
        )
        logs: list[StepLog] = []
        result = finetune(config, root / "export", model_dir, root / "out", progress=logs.append)
        parameters = parameter_count(model_dir)

    first, last = logs[args.warmup_steps - 1] if args.warmup_steps else None, logs[-1]
    seconds = last.elapsed_s - (first.elapsed_s if first else 0.0)
    tokens = last.tokens_seen - (first.tokens_seen if first else 0)
    steps = len(logs) - args.warmup_steps
    samples = steps * args.batch_size * args.grad_accumulation
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    name = args.model or (f"{args.preset} (random weights)" if args.preset else "tiny random LLaVA-OneVision")
    print(f"device: {device}  model: {name}  parameters: {parameters:,}  bf16: {config.bf16 is not False and torch.cuda.is_available()}")
    print(
        f"timed {steps} steps after {args.warmup_steps} warm-up: batch {args.batch_size} × accumulation "
        f"{args.grad_accumulation}, {tokens / (steps * args.batch_size * args.grad_accumulation):.0f} tokens/sample "
        f"(image {args.image_size}px), lora={args.lora}"
    )
    print(f"tokens/s: {tokens / seconds:,.0f}   samples/s: {samples / seconds:,.2f}   ({seconds:.2f} s)")
    print(f"loss: {result.first_loss:.3f} → {result.last_loss:.3f}")
    if torch.cuda.is_available():
        mfu = 6 * parameters * tokens / seconds / (args.peak_tflops * 1e12)
        print(f"MFU: {mfu:.1%} of {args.peak_tflops:g} TFLOP/s (6·N·tokens/s)")
    else:
        print("MFU: not reported on CPU")


if __name__ == "__main__":
    main()

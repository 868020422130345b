"""FEID export → token ids, answer-only labels and pixel values for LLaVA-OneVision SFT.

One chat template serves training and inference: ChatML as in LLaVA-OneVision's
own training (LLaVA-NeXT conversation template `qwen_1_5`):

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<image>\\n{question}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>

`chat_pieces` is the single source of that layout; `CHAT_TEMPLATE` is the same in
Jinja and is saved with every checkpoint, so `processor.apply_chat_template` or a
vLLM server render prompts identically (a test checks the two agree).

Loss is taken only on the answer and its end-of-turn token: the end-of-turn
token is inside the trained span, otherwise the model never learns to stop.
Image placeholders are never truncated: an example longer than `max_length`
is skipped with a message naming it.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from transformers.models.llava_onevision import LlavaOnevisionProcessor

logger = logging.getLogger(__name__)

EXPORT_FILE = "feid.jsonl"
SYSTEM_PROMPT = "You are a helpful assistant."
IMAGE_TOKEN = "<image>"
TURN_START = "<|im_start|>"
END_OF_TURN = "<|im_end|>"
IGNORE_INDEX = -100  # torch cross_entropy's default ignore_index

CHAT_TEMPLATE = (
    "<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    # trim_blocks (on in transformers' Jinja environment) would eat a literal newline after a tag
    "<|im_end|>{% if not loop.last or add_generation_prompt %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_ROLES = {"human": "user", "gpt": "assistant"}


class ImageOnlyLlavaOnevisionProcessor(LlavaOnevisionProcessor):
    """LlavaOnevisionProcessor without a video processor.

    ProcessorMixin derives its sub-processors from the `__init__` signature; the
    stock one lists `video_processor`, whose implementation needs torchvision
    (not installable here) and which still images never use.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_image_tokens: int | None = None,
        vision_feature_select_strategy: str | None = None,
        chat_template: str | None = None,
        image_token: str = IMAGE_TOKEN,
        vision_aspect_ratio: str = "anyres_max_9",
        **kwargs,
    ) -> None:
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            num_image_tokens=num_image_tokens,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            vision_aspect_ratio=vision_aspect_ratio,
            **kwargs,
        )


def load_processor(model_dir: Path) -> ImageOnlyLlavaOnevisionProcessor:
    """The processor saved beside a checkpoint (tokenizer + image processor)."""
    if not (Path(model_dir) / "processor_config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} has no processor_config.json: save the processor with the model "
            "(tasks.train.tiny.build_tiny_llava and finetune() both do)."
        )
    return ImageOnlyLlavaOnevisionProcessor.from_pretrained(str(model_dir))


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True)
class Record:
    """One FEID conversation: an image and alternating user/assistant turns."""

    id: str
    image_path: Path
    turns: tuple[Turn, ...]


@dataclass
class Encoded:
    """One tokenised example; labels are IGNORE_INDEX outside trained spans."""

    id: str
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor  # (tiles, 3, H, W): the resized whole image, then the anyres tiles
    image_size: tuple[int, int]  # (height, width) of the original image; the model unpads with it


class ExampleTooLong(ValueError):
    """An example whose tokens (image placeholders included) exceed max_length."""


def load_export(export_dir: Path) -> list[Record]:
    """Parse `<export_dir>/feid.jsonl` (LLaVA conversation format), checking every line."""
    path = Path(export_dir) / EXPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {EXPORT_FILE} in {export_dir}: point export_dir at an FEID export directory.")
    records = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                records.append(_parse_line(line, f"{path}:{number}", Path(export_dir)))
    if not records:
        raise ValueError(f"{path} holds no examples: re-run the FEID export.")
    return records


def _parse_line(line: str, where: str, export_dir: Path) -> Record:
    try:
        row = json.loads(line)
        example_id, image, conversations = str(row["id"]), row["image"], row["conversations"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{where}: expected JSON with 'id', 'image', 'conversations' ({error}).") from None
    turns = []
    for index, message in enumerate(conversations):
        role = _ROLES.get(message.get("from")) if isinstance(message, dict) else None
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected or not isinstance(message.get("value"), str):
            raise ValueError(
                f"{where} (id {example_id}): conversations[{index}] must be "
                f"{{'from': '{'human' if expected == 'user' else 'gpt'}', 'value': str}}; turns alternate human/gpt."
            )
        turns.append(Turn(role, message["value"]))
    if not turns or turns[-1].role != "assistant":
        raise ValueError(f"{where} (id {example_id}): the conversation must end with a 'gpt' answer.")
    image_count = sum(turn.text.count(IMAGE_TOKEN) for turn in turns)
    if image_count != 1 or IMAGE_TOKEN not in turns[0].text:
        raise ValueError(
            f"{where} (id {example_id}): the first human turn must hold the one '{IMAGE_TOKEN}' "
            f"placeholder (found {image_count} in the conversation)."
        )
    image_path = export_dir / image
    if not image_path.is_file():
        raise FileNotFoundError(f"{where} (id {example_id}): image {image_path} is missing from the export.")
    return Record(example_id, image_path, tuple(turns))


def chat_pieces(turns: Sequence[Turn], *, add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
    """The conversation as (text, trained) pieces in the ChatML layout above.

    A trained piece is an assistant answer followed by END_OF_TURN; everything
    else (system prompt, questions, role headers, the newline between turns) is
    context. With add_generation_prompt the pieces end with the open assistant
    header, exactly the prompt the model saw before each answer in training.
    """
    pieces: list[tuple[str, bool]] = []
    context = f"{TURN_START}system\n{SYSTEM_PROMPT}{END_OF_TURN}\n"
    for turn in turns:
        if turn.role == "user":
            context += f"{TURN_START}user\n{turn.text}{END_OF_TURN}\n{TURN_START}assistant\n"
        else:
            pieces.append((context, False))
            pieces.append((turn.text + END_OF_TURN, True))
            context = "\n"  # separates an answer's end-of-turn from the next user turn
    if add_generation_prompt:
        pieces.append((context, False))
    return pieces


def question_turn(question: str) -> Turn:
    """A user turn carrying the image; FEID questions already start with '<image>\\n'."""
    return Turn("user", question if IMAGE_TOKEN in question else f"{IMAGE_TOKEN}\n{question}")


def join_pieces(pieces: Sequence[tuple[Sequence[int], bool]]) -> tuple[list[int], list[int]]:
    """Concatenate token pieces; labels copy the trained pieces and are IGNORE_INDEX elsewhere."""
    input_ids: list[int] = []
    labels: list[int] = []
    for ids, trained in pieces:
        input_ids.extend(ids)
        labels.extend(ids if trained else [IGNORE_INDEX] * len(ids))
    return input_ids, labels


def _open_rgb(image: Image.Image | bytes | Path) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, bytes):
        image = io.BytesIO(image)
    with Image.open(image) as opened:
        return opened.convert("RGB")


def encode(
    example_id: str,
    image: Image.Image | bytes | Path,
    pieces: Sequence[tuple[str, bool]],
    processor: ImageOnlyLlavaOnevisionProcessor,
    max_length: int | None = None,
) -> Encoded:
    """Tokenise text pieces with the image expanded into its placeholder tokens.

    Pieces are tokenised one by one (the first, which holds '<image>', through
    the processor) so the prompt's ids are the same at train and inference time
    and the trained span's boundaries are exact.
    """
    rgb = _open_rgb(image)
    first = processor(images=[rgb], text=[pieces[0][0]], return_tensors="pt")
    piece_ids = [(first["input_ids"][0].tolist(), pieces[0][1])]
    for text, trained in pieces[1:]:
        piece_ids.append((processor.tokenizer(text, add_special_tokens=False)["input_ids"], trained))
    input_ids, labels = join_pieces(piece_ids)
    if max_length is not None and len(input_ids) > max_length:
        image_tokens = input_ids.count(processor.image_token_id)
        raise ExampleTooLong(
            f"example {example_id}: {len(input_ids)} tokens ({image_tokens} of them image placeholders, which are "
            f"never truncated) exceed max_length={max_length}; raise TrainConfig.max_length or shorten the answer."
        )
    height, width = first["image_sizes"][0].tolist()
    return Encoded(example_id, input_ids, labels, first["pixel_values"][0], (height, width))


def encode_record(
    record: Record, processor: ImageOnlyLlavaOnevisionProcessor, max_length: int | None = None
) -> Encoded:
    return encode(record.id, record.image_path, chat_pieces(record.turns), processor, max_length)


def encode_prompt(
    image: Image.Image | bytes, question: str, processor: ImageOnlyLlavaOnevisionProcessor
) -> Encoded:
    """The inference prompt for one image and question (no labels to learn)."""
    pieces = chat_pieces([question_turn(question)], add_generation_prompt=True)
    return encode("prompt", image, pieces, processor)


def token_length(record: Record, processor: ImageOnlyLlavaOnevisionProcessor) -> int:
    """Tokens `encode_record` will produce, from the image header and the text only.

    Cheap enough to run over every example before training (no pixels are
    decoded): one '<image>' token in the text becomes the image's feature count.
    """
    with Image.open(record.image_path) as image:
        width, height = image.size
    # The processor's own count for an image of this size (the helper vLLM uses), so it
    # cannot drift from the expansion `encode` performs; a test checks they agree.
    features = processor._get_num_multimodal_tokens(image_sizes=[(height, width)]).num_image_tokens[0]
    text_tokens = sum(
        len(processor.tokenizer(text, add_special_tokens=False)["input_ids"]) for text, _ in chat_pieces(record.turns)
    )
    return text_tokens - 1 + features


def fitting_records(
    records: Sequence[Record], processor: ImageOnlyLlavaOnevisionProcessor, max_length: int
) -> tuple[list[Record], list[str]]:
    """Records that fit max_length, and the ids of those skipped (each logged with its length)."""
    kept, skipped = [], []
    for record in records:
        length = token_length(record, processor)
        if length > max_length:
            logger.warning(
                "skipping example %s: %d tokens > max_length=%d (image tokens are never truncated); "
                "raise TrainConfig.max_length to keep it",
                record.id,
                length,
                max_length,
            )
            skipped.append(record.id)
        else:
            kept.append(record)
    return kept, skipped


class FeidDataset(torch.utils.data.Dataset):
    """Encodes records lazily: pixel values of a whole export do not fit in memory."""

    def __init__(self, records: Sequence[Record], processor: ImageOnlyLlavaOnevisionProcessor, max_length: int):
        self.records = list(records)
        self.processor = processor
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Encoded:
        return encode_record(self.records[index], self.processor, self.max_length)


def collate(
    batch: Sequence[Encoded], pad_token_id: int, padding_side: Literal["right", "left"] = "right"
) -> dict[str, torch.Tensor]:
    """Pad a batch: right padding for training, left padding for generation.

    input_ids/attention_mask/labels: (B, L_max); pixel_values: (B, T_max, 3, H, W)
    with zero tiles after each image's own T (the model keeps only the tiles
    its image_sizes imply); image_sizes: (B, 2).
    """
    longest = max(len(example.input_ids) for example in batch)
    most_tiles = max(example.pixel_values.shape[0] for example in batch)
    input_ids = torch.full((len(batch), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
    pixel_values = torch.zeros((len(batch), most_tiles, *batch[0].pixel_values.shape[1:]))
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        span = slice(longest - n, longest) if padding_side == "left" else slice(0, n)
        input_ids[row, span] = torch.tensor(example.input_ids)
        labels[row, span] = torch.tensor(example.labels)
        attention_mask[row, span] = 1
        pixel_values[row, : example.pixel_values.shape[0]] = example.pixel_values
    image_sizes = torch.tensor([example.image_size for example in batch], dtype=torch.long)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pixel_values": pixel_values,
        "image_sizes": image_sizes,
    }

"""tasks.train: masking on literal tokens, then real training of the tiny LLaVA-OneVision on CPU."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from PIL import Image, ImageDraw  # noqa: E402
from transformers import LlavaOnevisionForConditionalGeneration  # noqa: E402

from tasks.train.data import (  # noqa: E402
    END_OF_TURN,
    IGNORE_INDEX,
    Encoded,
    ExampleTooLong,
    Turn,
    chat_pieces,
    collate,
    encode_prompt,
    encode_record,
    fitting_records,
    join_pieces,
    load_export,
    load_processor,
    token_length,
)
from tasks.train.finetune import StepLog, TrainConfig, accumulate_gradients, finetune  # noqa: E402
from tasks.train.generate import generate_answers, load_for_inference  # noqa: E402
from tasks.train.tiny import build_tiny_llava  # noqa: E402

# Colour of the face, question, answer. Questions differ, and images differ in
# width, so prompts differ in length and batched generation has to left-pad.
EXAMPLES = [
    ((220, 40, 40), "What expression does this face show?", "Happiness: AU6 and AU12 are active, valence 0.8."),
    ((40, 200, 60), "Which action units are present?", "AU1, AU4 and AU15: the face looks sad."),
    ((40, 60, 220), "Estimate valence and arousal.", "Valence -0.6, arousal 0.7: anger."),
    ((230, 230, 40), "Describe the facial emotion.", "Surprise with AU1, AU2, AU5 and AU26."),
]


def _face_png(colour: tuple[int, int, int], width: int) -> bytes:
    image = Image.new("RGB", (width, 48), colour)
    ImageDraw.Draw(image).ellipse((8, 8, 30, 40), fill=tuple(255 - c for c in colour))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_export(export_dir: Path, rows: list[dict] | None = None) -> list[bytes]:
    (export_dir / "images").mkdir(parents=True)
    images, lines = [], []
    for index, (colour, question, answer) in enumerate(EXAMPLES):
        data = _face_png(colour, 40 + 8 * index)
        name = f"images/{hashlib.sha256(data).hexdigest()}.png"
        (export_dir / name).write_bytes(data)
        images.append(data)
        conversation = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
        lines.append({"id": f"feid-{index}", "image": name, "conversations": conversation})
    (export_dir / "feid.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows or lines))
    return images


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> tuple[Path, list[bytes]]:
    export_dir = tmp_path_factory.mktemp("export")
    return export_dir, _write_export(export_dir)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    corpus = [question for _, question, _ in EXAMPLES] + [answer for *_, answer in EXAMPLES]
    return build_tiny_llava(tmp_path_factory.mktemp("base"), corpus, seed=0)


def _fast(**overrides) -> TrainConfig:
    values = dict(learning_rate=3e-3, warmup_ratio=0.0, batch_size=4, max_steps=4, save_steps=1000)
    return TrainConfig(**{**values, **overrides})


# --- masking and padding on literal tokens -----------------------------------------


def test_join_pieces_labels_only_trained_pieces():
    input_ids, labels = join_pieces([([1, 2, 3], False), ([4, 5], True), ([6], False), ([7, 8], True)])
    assert input_ids == [1, 2, 3, 4, 5, 6, 7, 8]
    assert labels == [-100, -100, -100, 4, 5, -100, 7, 8]


def test_collate_pads_right_for_training_and_left_for_generation():
    tile = torch.ones(1, 3, 2, 2)
    short = Encoded("a", [5, 6, 7], [-100, 6, 7], tile, (2, 2))
    long = Encoded("b", [5, 6, 7, 8, 9], [-100, -100, 7, 8, 9], torch.ones(3, 3, 2, 2), (4, 2))
    right = collate([short, long], pad_token_id=0)
    assert right["input_ids"].tolist() == [[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]]
    assert right["labels"].tolist() == [[-100, 6, 7, -100, -100], [-100, -100, 7, 8, 9]]
    assert right["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    # (B, T_max, 3, H, W): the 1-tile image is zero-padded to 3 tiles.
    assert right["pixel_values"].shape == (2, 3, 3, 2, 2)
    assert right["pixel_values"][0, 1:].abs().sum() == 0
    assert right["image_sizes"].tolist() == [[2, 2], [4, 2]]
    left = collate([short, long], pad_token_id=0, padding_side="left")
    assert left["input_ids"].tolist() == [[0, 0, 5, 6, 7], [5, 6, 7, 8, 9]]
    assert left["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]


def test_chat_pieces_put_end_of_turn_in_the_trained_span():
    turns = [Turn("user", "<image>\nQ1"), Turn("assistant", "A1"), Turn("user", "Q2"), Turn("assistant", "A2")]
    trained = [text for text, is_trained in chat_pieces(turns) if is_trained]
    assert trained == [f"A1{END_OF_TURN}", f"A2{END_OF_TURN}"]


# --- tokenisation with the tiny model's processor ----------------------------------


def test_encoded_example_trains_only_answer_and_end_of_turn(export, base_dir):
    processor = load_processor(base_dir)
    record = load_export(export[0])[0]
    encoded = encode_record(record, processor)
    trained = [token for token, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert processor.tokenizer.decode(trained) == EXAMPLES[0][2] + END_OF_TURN
    # The untrained prefix is exactly the inference prompt: one template for both.
    prompt = encode_prompt(export[1][0], EXAMPLES[0][1], processor)
    assert encoded.input_ids[: len(prompt.input_ids)] == prompt.input_ids
    assert encoded.labels[len(prompt.input_ids) - 1] == IGNORE_INDEX
    assert encoded.labels[len(prompt.input_ids)] != IGNORE_INDEX
    # 40×48 (w×h) image, 32-pixel tiles of 4×4 patches, 64×64 pinpoint: 16 (whole image)
    # + 8 rows × 6 columns (the 8×8 grid unpadded to the 40:48 aspect) + 8 row newlines.
    assert encoded.input_ids.count(processor.image_token_id) == 16 + 8 * 6 + 8
    assert token_length(record, processor) == len(encoded.input_ids)


def test_saved_chat_template_renders_the_training_prompt(base_dir):
    processor = load_processor(base_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}]
    rendered = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    pieces = chat_pieces([Turn("user", "<image>\nQ?")], add_generation_prompt=True)
    assert rendered == "".join(text for text, _ in pieces)


def test_example_longer_than_max_length_is_skipped_by_id(export, base_dir):
    processor = load_processor(base_dir)
    records = load_export(export[0])
    lengths = [token_length(record, processor) for record in records]
    kept, skipped = fitting_records(records, processor, max_length=min(lengths))
    assert skipped and all(record.id not in skipped for record in kept)
    with pytest.raises(ExampleTooLong, match=skipped[0]):
        encode_record(next(r for r in records if r.id == skipped[0]), processor, max_length=min(lengths))


def test_export_without_image_placeholder_names_the_line(tmp_path):
    conversation = [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]
    row = {"id": "bad-1", "image": "x.png", "conversations": conversation}
    _write_export(tmp_path, rows=[row])
    with pytest.raises(ValueError, match=r"feid.jsonl:1 \(id bad-1\).*<image>"):
        load_export(tmp_path)


# --- training ----------------------------------------------------------------------


def test_tiny_model_overfits_and_generates_the_trained_answers(export, base_dir, tmp_path):
    export_dir, images = export
    result = finetune(_fast(max_steps=60), export_dir, base_dir, tmp_path / "run")
    assert result.steps == 60 and len(result.losses) == 60
    assert result.first_loss / result.last_loss >= 5, result.losses[::10]
    assert (result.final_dir / "train_config.json").is_file()
    model, processor = load_for_inference(result.final_dir)
    questions = [question for _, question, _ in EXAMPLES]
    expected = [answer for *_, answer in EXAMPLES]
    assert generate_answers(model, processor, images, questions, max_new_tokens=40, batch_size=4) == expected
    pil_image = Image.open(io.BytesIO(images[2]))
    assert generate_answers(model, processor, [pil_image], questions[2:3], max_new_tokens=40) == expected[2:3]


def _parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.named_parameters()}


def test_lora_changes_adapters_and_projector_only(export, base_dir, tmp_path):
    from peft import PeftModel

    config = _fast(use_lora=True, lora_rank=4, lora_alpha=8, learning_rate=1e-2, max_steps=3, save_steps=3)
    result = finetune(config, export[0], base_dir, tmp_path / "lora")
    adapter_dir = result.checkpoint_dirs[-1]
    assert (adapter_dir / "adapter_model.safetensors").is_file() and not (adapter_dir / "model.safetensors").exists()
    base = _parameters(LlavaOnevisionForConditionalGeneration.from_pretrained(str(base_dir)))
    fresh = LlavaOnevisionForConditionalGeneration.from_pretrained(str(base_dir))
    tuned = PeftModel.from_pretrained(fresh, str(adapter_dir))
    changed, unchanged = [], []
    for name, value in tuned.named_parameters():
        # peft names: base_model.model.<original>, with .base_layer / .original_module /
        # .modules_to_save.default inserted before the wrapped module's parameter name.
        original = name.removeprefix("base_model.model.")
        for inserted in (".base_layer", ".original_module", ".modules_to_save.default"):
            original = original.replace(inserted, "")
        if "lora_B" in name:  # initialised to zero, so any change is training
            changed.append(name)
            assert value.abs().sum() > 0, f"{name} did not train"
        elif "modules_to_save" in name:
            changed.append(name)
            assert not torch.equal(value, base[original]), f"{name} did not train"
        elif "lora_A" not in name:
            unchanged.append(name)
            assert torch.equal(value, base[original]), f"frozen {name} changed"
    assert changed and any("vision_tower" in name for name in unchanged)


def test_full_sft_with_frozen_vision_tower(export, base_dir, tmp_path):
    result = finetune(_fast(vision_tower_lr=0.0, max_steps=2), export[0], base_dir, tmp_path / "frozen")
    before = _parameters(LlavaOnevisionForConditionalGeneration.from_pretrained(str(base_dir)))
    after = _parameters(LlavaOnevisionForConditionalGeneration.from_pretrained(str(result.final_dir)))
    for name, value in after.items():
        if ".vision_tower." in name:
            assert torch.equal(value, before[name]), f"frozen {name} changed"
    for trained in ("model.multi_modal_projector.linear_1.weight", "lm_head.weight"):
        assert not torch.equal(after[trained], before[trained]), f"{trained} did not train"


def test_accumulated_micro_batches_give_the_gradient_of_one_big_batch(export, base_dir):
    # Examples have different answer lengths, so a per-micro-batch mean would weight them differently.
    processor = load_processor(base_dir)
    encoded = [encode_record(record, processor) for record in load_export(export[0])]
    pad = processor.tokenizer.pad_token_id
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(str(base_dir))
    cpu = torch.device("cpu")
    whole = accumulate_gradients(model, [collate(encoded, pad)], cpu, bf16=False)
    # Parameters off the loss path (SigLIP's post-layernorm: features come from hidden_states[-1]) have no grad.
    one_batch = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    split = accumulate_gradients(model, [collate([e], pad) for e in encoded], cpu, bf16=False)
    assert whole[1:] == (split[1], sum(len(e.input_ids) for e in encoded))
    assert split[0] == pytest.approx(whole[0], rel=1e-6)
    split_grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert split_grads.keys() == one_batch.keys()
    for name, grad in split_grads.items():
        assert torch.allclose(grad, one_batch[name], rtol=1e-4, atol=1e-7), name


class _Crash(RuntimeError):
    pass


@pytest.mark.parametrize("use_lora", [False, True], ids=["full", "lora"])
def test_resume_after_crash_continues_from_the_saved_step(export, base_dir, tmp_path, use_lora):
    # LoRA dropout makes the run depend on the RNG stream, which resume must restore too.
    config = _fast(max_steps=8, save_steps=3, batch_size=2, grad_accumulation=2, use_lora=use_lora, lora_dropout=0.1)
    reference = finetune(config, export[0], base_dir, tmp_path / "reference")

    def crash_after_step_5(log: StepLog) -> None:
        if log.step == 5:
            raise _Crash("simulated kill")

    run = tmp_path / "crashed"
    with pytest.raises(_Crash):
        finetune(config, export[0], base_dir, run, progress=crash_after_step_5)
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-3"]
    state = json.loads((run / "checkpoint-3" / "training_state.json").read_text())
    assert state["step"] == 3 and len(state["losses"]) == 3 and state["world_size"] == 1
    saved_config = json.loads((run / "checkpoint-3" / "train_config.json").read_text())["train_config"]
    assert TrainConfig.from_dict(saved_config) == config

    with pytest.raises(FileExistsError, match="resume=True"):
        finetune(config, export[0], base_dir, run, resume=False)
    with pytest.raises(ValueError, match="learning_rate"):
        finetune(dataclasses.replace(config, learning_rate=1e-3), export[0], base_dir, run)

    resumed = finetune(config, export[0], base_dir, run)
    assert resumed.resumed_from_step == 3 and resumed.steps == 8
    assert [p.name for p in resumed.checkpoint_dirs] == ["checkpoint-3", "checkpoint-6", "checkpoint-8"]
    assert resumed.losses == pytest.approx(reference.losses, rel=1e-6)
    assert resumed.tokens_seen == reference.tokens_seen

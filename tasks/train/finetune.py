"""Supervised fine-tuning of LLaVA-OneVision on an FEID export (SEKE paper §3.3, §4.2).

The paper runs full-parameter SFT at lr 1e-5; LoRA is an option as in EmoLA and
EMO-LLaMA. Loss is the mean cross-entropy over answer tokens only (the labels
built in tasks.train.data), weighted per token across gradient-accumulation
micro-batches.

Engine: accelerate, driving one loop on one device, DDP, FSDP or DeepSpeed
ZeRO-3 (chosen by `accelerate launch` flags or an accelerate config file; see
tasks.train.launch). Not TRL's SFTTrainer nor transformers' Trainer: this loop
keeps three guarantees those make hard to keep together — the schedule of
examples is a pure function of (seed, step) for every world size, so a resumed
run sees exactly the batches it would have seen; the loss is normalised by the
answer tokens of the whole accumulated step summed over all processes (Trainer
averages per micro-batch and per process unless told otherwise, and drops
columns its forward signature does not list); and each checkpoint carries our
run record. accelerate brings what a plain loop cannot: process groups,
gradient sync, sharding, mixed-precision policies and sharded checkpoints.

Data parallel semantics: batch_size is per process, so a step holds
batch_size × world_size × grad_accumulation examples; every process takes its
slice of each global micro-batch. Two processes with batch_size 2 therefore
train on the same examples per step as one with batch_size 4 (a test checks
that their losses agree).

Checkpoint layout (output_dir/checkpoint-N, written to a temp dir and renamed,
so a crash mid-save never leaves a half checkpoint that resume would pick):
    accelerate/                         accelerator.save_state: model (sharded under FSDP /
                                        ZeRO-3), optimizer, scheduler, RNG of every process
    config.json + processor files       the model config, tokenizer, image processor, chat template
    adapter_config.json + adapter_model.safetensors   LoRA only: the adapter (+ projector)
    train_config.json                   TrainConfig + export hash + versions (the run record)
    training_state.json                 step, world size, losses, tokens, data position
output_dir/final holds the full model (gathered from the shards; LoRA merged
into the base weights, so it loads like any LLaVA-OneVision checkpoint), the
processor, train_config.json and train_result.json.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache, partial
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from transformers import LlavaOnevisionForConditionalGeneration, get_scheduler

from tasks.train.data import (
    CHAT_TEMPLATE,
    EXPORT_FILE,
    IGNORE_INDEX,
    FeidDataset,
    collate,
    fitting_records,
    load_export,
    load_processor,
)

STATE_FILE = "training_state.json"
ACCELERATE_DIR = "accelerate"
RECORD_FILE = "train_config.json"
RESULT_FILE = "train_result.json"
# Fields that may change between a crash and its resume without changing the run.
_RESUME_MAY_DIFFER = {"save_steps", "dataloader_workers"}


@dataclass
class TrainConfig:
    """Hyper-parameters of one fine-tuning run (defaults: SEKE paper §4.2)."""

    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate (paper §4.2: 1e-5)."})
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = field(
        default="cosine", metadata={"help": "Decay after warm-up (transformers.get_scheduler name)."}
    )
    warmup_ratio: float = field(default=0.03, metadata={"help": "Fraction of optimizer steps spent warming up."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (LLaVA recipes use 0)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the global gradient norm to this."})
    epochs: int = field(default=1, metadata={"help": "Passes over the export; ignored when max_steps > 0."})
    max_steps: int = field(default=0, metadata={"help": "Optimizer steps to run; 0 means epochs decide."})
    batch_size: int = field(default=1, metadata={"help": "Examples per micro-batch (per device)."})
    grad_accumulation: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    vision_tower_lr: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the SigLIP tower in full SFT; None = learning_rate, 0 = frozen "
            "(LLaVA-OneVision's own recipe uses 2e-6 with 1e-5 elsewhere). LoRA always freezes it."
        },
    )
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 autocast (fp32 master weights); None = on with CUDA, off on CPU."}
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Recompute activations in backward; None = on with CUDA, off on CPU."}
    )
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank r."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scale numerator (update scaled by alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "Linear layers of the language model that get adapters (vision tower excluded)."},
    )
    lora_train_projector: bool = field(
        default=True, metadata={"help": "With LoRA, also train the multimodal projector fully (modules_to_save)."}
    )
    max_length: int = field(
        default=4096,
        metadata={"help": "Longest example in tokens, image placeholders included; longer ones are skipped."},
    )
    save_steps: int = field(default=500, metadata={"help": "Write output_dir/checkpoint-N every N optimizer steps."})
    seed: int = field(default=0, metadata={"help": "Seeds data order, initial adapters and dropout."})
    dataloader_workers: int = field(default=0, metadata={"help": "Processes decoding images (0 = in the loop)."})

    def __post_init__(self) -> None:
        positive = ("learning_rate", "epochs", "batch_size", "grad_accumulation", "max_length", "save_steps")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)!r}.")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"TrainConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}.")
        if self.max_steps < 0:
            raise ValueError(f"TrainConfig.max_steps must be >= 0 (0 = use epochs), got {self.max_steps!r}.")
        if self.vision_tower_lr is not None and self.vision_tower_lr < 0:
            raise ValueError(f"TrainConfig.vision_tower_lr must be >= 0 or None, got {self.vision_tower_lr!r}.")
        if self.use_lora and (self.lora_rank <= 0 or not self.lora_target_modules):
            raise ValueError("TrainConfig.lora_rank must be > 0 and lora_target_modules non-empty with use_lora.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**values)


@dataclass(frozen=True)
class StepLog:
    """What `progress` receives after every optimizer step."""

    step: int
    total_steps: int
    loss: float  # mean cross-entropy per answer token of this step
    learning_rate: float
    tokens_seen: int  # input tokens (image placeholders included) processed so far in the run
    elapsed_s: float  # seconds spent in the training loop of this call


@dataclass
class TrainResult:
    final_dir: Path
    checkpoint_dirs: list[Path]
    steps: int
    first_loss: float
    last_loss: float
    losses: list[float]  # one per optimizer step, over the whole run (resumed runs included)
    tokens_seen: int  # input tokens, image placeholders included
    answer_tokens: int  # tokens that carried loss
    wall_time_s: float  # this call, loading and saving included
    train_time_s: float  # this call's optimizer steps only
    resumed_from_step: int
    skipped_ids: list[str]
    world_size: int = 1  # processes that trained


@dataclass
class _State:
    step: int = 0
    losses: list[float] = field(default_factory=list)
    tokens_seen: int = 0
    answer_tokens: int = 0


def step_schedule(
    n_examples: int, config: TrainConfig, world_size: int = 1
) -> tuple[int, Callable[[int], list[list[int]]]]:
    """(total optimizer steps, step → its global micro-batches of example indices).

    A global micro-batch holds batch_size × world_size examples (see
    `rank_share` for each process's slice). Epoch e shuffles with seed
    (config.seed, e); its ceil(n / global micro-batch) micro-batches form
    ceil(that / grad_accumulation) steps (the last step of an epoch may be
    shorter). Pure, so a resumed run replays the same order.
    """
    global_batch = config.batch_size * world_size
    batches_per_epoch = math.ceil(n_examples / global_batch)
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accumulation)
    total = config.max_steps or config.epochs * steps_per_epoch

    @lru_cache(maxsize=1)  # steps are asked for in order: one shuffle per epoch
    def order_of(epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        return torch.randperm(n_examples, generator=generator).tolist()

    def batches_of(step: int) -> list[list[int]]:
        epoch, index = divmod(step, steps_per_epoch)
        order = order_of(epoch)
        first = index * config.grad_accumulation * global_batch
        last = min(first + config.grad_accumulation * global_batch, n_examples)
        return [order[i : min(i + global_batch, last)] for i in range(first, last, global_batch)]

    return total, batches_of


def rank_share(global_batch: list[int], rank: int, batch_size: int) -> tuple[list[int], bool]:
    """This process's slice of a global micro-batch, and whether it is a stand-in.

    At the end of an epoch a slice can be empty; every process must still run
    forward and backward (gradient sync is collective), so it takes the first
    example as a stand-in whose loss is masked out.
    """
    share = global_batch[rank * batch_size : (rank + 1) * batch_size]
    return (share, False) if share else (global_batch[:1], True)


def run_record(config: TrainConfig, export_dir: Path, base_model_dir: Path, examples: int, skipped: list[str]) -> dict:
    """The record saved inside every checkpoint: what was trained, on what, with which code."""
    export_file = Path(export_dir) / EXPORT_FILE
    versions = {}
    for package in ("seke", "torch", "transformers", "peft"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "train_config": config.to_dict(),
        "base_model_dir": str(Path(base_model_dir).resolve()),
        "export_dir": str(Path(export_dir).resolve()),
        "export_sha256": hashlib.sha256(export_file.read_bytes()).hexdigest(),
        "examples": examples,
        "skipped_ids": skipped,
        "versions": versions,
    }


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints (those with a training state), oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _check_same_run(checkpoint: Path, record: dict, world_size: int) -> None:
    saved = json.loads((checkpoint / RECORD_FILE).read_text())
    old, new = saved["train_config"], record["train_config"]
    changed = [k for k in new if k not in _RESUME_MAY_DIFFER and old.get(k) != new[k]]
    if saved["export_sha256"] != record["export_sha256"]:
        changed.append(f"{EXPORT_FILE} (sha256)")
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" if k in new else k for k in changed)
        raise ValueError(
            f"{checkpoint} belongs to a different run ({details}); use a new output_dir, "
            "or delete its checkpoints to start over."
        )
    saved_world = json.loads((checkpoint / STATE_FILE).read_text())["world_size"]
    if saved_world != world_size:
        raise ValueError(
            f"{checkpoint} was written by {saved_world} processes but this run has {world_size}: resume with "
            f"{saved_world} processes (the data order and the optimizer shards depend on it)."
        )


def _load_model(config: TrainConfig, base_model_dir: Path) -> torch.nn.Module:
    # fp32 master weights; bf16 only inside autocast, so lr 1e-5 updates do not
    # vanish in bf16 rounding (bf16 keeps ~3 significant digits). A resumed run
    # builds the same model and accelerator.load_state puts the saved weights in.
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(str(base_model_dir), dtype=torch.float32)
    # LLaVA takes SigLIP's hidden states from before its post-layernorm, so that
    # layer never gets a gradient. Frozen, it needs no optimizer state (a sharded
    # optimizer checkpoint would lack it on load) and DDP need not look for
    # unused parameters.
    model.model.vision_tower.post_layernorm.requires_grad_(False)
    if not config.use_lora:
        if config.vision_tower_lr == 0:
            model.model.vision_tower.requires_grad_(False)
        return model
    from peft import LoraConfig, get_peft_model

    names = "|".join(config.lora_target_modules)
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        # A string is matched as a full regex on module names: only the language
        # model's layers, since SigLIP has q_proj/k_proj/v_proj too.
        target_modules=rf".*language_model.*\.({names})",
        modules_to_save=["multi_modal_projector"] if config.lora_train_projector else None,
    )
    return get_peft_model(model, lora)


def _shard_on_cpu(accelerator) -> None:
    """Give CPU processes launched with the fsdp flags the FSDP2 state accelerate gives GPU processes.

    accelerate switches FSDP on only for accelerator devices, although FSDP2
    shards over gloo on CPU too; without this, the fsdp strategy could not be
    tested on a machine without GPUs. The plugin is built from the same FSDP_*
    variables `accelerate launch` sets, and both state singletons are updated
    because AcceleratorState copies PartialState's distributed_type whenever it
    is constructed.
    """
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    PartialState().distributed_type = accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    vision, rest = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (vision if ".vision_tower." in name else rest).append(parameter)
    groups = [{"params": rest, "lr": config.learning_rate}]
    if vision:
        groups.append({"params": vision, "lr": config.vision_tower_lr or config.learning_rate})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def _save(accelerator, output_dir: Path, model, processor, state: _State, record: dict, use_lora: bool) -> Path:
    """Every process writes its part (shards, RNG) of checkpoint-N; the main process the rest and renames."""
    final = output_dir / f"checkpoint-{state.step}"
    temporary = output_dir / f".checkpoint-{state.step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary / ACCELERATE_DIR))
    accelerator.wait_for_everyone()  # every process's files are written before the rename
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if use_lora:
            unwrapped.save_pretrained(temporary)  # the adapter (+ modules_to_save) on its own
        unwrapped.config.save_pretrained(temporary)
        processor.save_pretrained(temporary)
        (temporary / RECORD_FILE).write_text(json.dumps(record, indent=2))
        (temporary / STATE_FILE).write_text(
            json.dumps({**asdict(state), "world_size": accelerator.num_processes, "next_step": state.step}, indent=2)
        )
        shutil.rmtree(final, ignore_errors=True)
        temporary.rename(final)
    accelerator.wait_for_everyone()
    return final


def _saved_state(checkpoint: Path) -> _State:
    saved = json.loads((checkpoint / STATE_FILE).read_text())
    return _State(saved["step"], saved["losses"], saved["tokens_seen"], saved["answer_tokens"])


def accumulate_gradients(
    model: torch.nn.Module,
    micro_batches: list[dict[str, torch.Tensor]],
    device: torch.device,
    bf16: bool,
    *,
    accelerator=None,
    stand_ins: Sequence[bool] | None = None,
) -> tuple[float, int, int]:
    """Backward over one optimizer step's micro-batches (collated, with labels).

    Returns (mean cross-entropy per answer token, answer tokens, input tokens),
    all over every process. Each micro-batch's summed loss is divided by the
    answer tokens of the whole step on all processes, so the accumulated
    gradient equals that of one batch holding all of them, whatever the
    micro-batch lengths and the world size. Data-parallel backends average
    gradients over processes, hence the factor world_size. Stand-in
    micro-batches (see rank_share) carry no loss and no tokens.
    """
    world = accelerator.num_processes if accelerator is not None else 1
    stand_ins = list(stand_ins) if stand_ins is not None else [False] * len(micro_batches)
    # Position t predicts token t+1, so the loss counts labels from position 1 on.
    counts = torch.tensor(
        [
            [int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()), int(batch["attention_mask"].sum())]
            for batch, stand_in in zip(micro_batches, stand_ins, strict=True)
            if not stand_in
        ]
        or [[0, 0]],
        dtype=torch.float64,
    ).sum(0)
    total_loss = torch.zeros((), dtype=torch.float64)
    if accelerator is not None:
        counts = accelerator.reduce(counts.to(accelerator.device), "sum").cpu()
    answer_tokens, input_tokens = int(counts[0]), int(counts[1])
    for index, batch in enumerate(micro_batches):
        batch = {key: value.to(device) for key, value in batch.items()}
        labels = batch.pop("labels")
        if stand_ins[index]:
            labels = torch.full_like(labels, IGNORE_INDEX)
        last = index == len(micro_batches) - 1
        # Gradients are synchronised once per step, after the last micro-batch.
        sync = nullcontext() if accelerator is None or last else accelerator.no_sync(model)
        with sync:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(**batch, use_cache=False).logits  # (B, L, vocab)
            loss_sum = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            scaled = loss_sum * world / answer_tokens
            scaled.backward() if accelerator is None else accelerator.backward(scaled)
        total_loss += loss_sum.detach().double().cpu()
    if accelerator is not None:
        total_loss = accelerator.reduce(total_loss.to(accelerator.device), "sum").cpu()
    return float(total_loss) / answer_tokens, answer_tokens, input_tokens


def finetune(
    config: TrainConfig,
    export_dir: Path,
    base_model_dir: Path,
    output_dir: Path,
    *,
    resume: bool = True,
    progress: Callable[[StepLog], None] | None = None,
) -> TrainResult:
    """Fine-tune the checkpoint in base_model_dir on the FEID export in export_dir.

    Runs in every process of a distributed launch (`accelerate launch`, see
    tasks.train.launch) or alone. Resumes from the newest
    output_dir/checkpoint-N when resume is True (model, optimizer, scheduler,
    step, RNG of every process); with resume False an output_dir that already
    holds checkpoints is refused rather than silently mixed. `progress` is
    called on the main process only.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    started = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    on_gpu = torch.cuda.is_available()
    bf16 = config.bf16 if config.bf16 is not None else on_gpu
    checkpointing = config.gradient_checkpointing if config.gradient_checkpointing is not None else on_gpu
    # Under `accelerate launch` its --mixed_precision (set from TrainConfig.bf16 by tasks.train.launch)
    # also shapes FSDP's policies; alone, the autocast in accumulate_gradients does bf16, and accelerate's
    # process-wide state stays "no", so one process may run fine-tunes with different settings.
    launched = "ACCELERATE_MIXED_PRECISION" in os.environ
    accelerator = Accelerator(mixed_precision=None if launched else "no")
    if accelerator.distributed_type == DistributedType.MULTI_CPU and os.environ.get("ACCELERATE_USE_FSDP") == "true":
        _shard_on_cpu(accelerator)
    world, rank = accelerator.num_processes, accelerator.process_index
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if config.use_lora and sharded:
        raise ValueError("TrainConfig.use_lora works alone or with DDP, not with FSDP / DeepSpeed: LoRA fits one GPU.")
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        if config.grad_accumulation != 1:
            raise ValueError(
                "with DeepSpeed set TrainConfig.grad_accumulation to 1 and raise batch_size or the process count: "
                "DeepSpeed's engine steps the optimizer itself."
            )
        # No dataloader goes through prepare() (the loop schedules its own batches), and DeepSpeed's engine
        # clips inside backward(): both settings go into its config instead.
        deepspeed_config = accelerator.state.deepspeed_plugin.deepspeed_config
        deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
        deepspeed_config["train_batch_size"] = config.batch_size * accelerator.num_processes
        deepspeed_config["gradient_clipping"] = config.max_grad_norm

    processor = load_processor(base_model_dir)
    # Checkpoints carry the template we train with (a real base checkpoint ships
    # its own, slightly different one), so every consumer prompts identically.
    processor.chat_template = processor.tokenizer.chat_template = CHAT_TEMPLATE
    records, skipped = fitting_records(load_export(export_dir), processor, config.max_length)
    if not records:
        raise ValueError(
            f"no example of {Path(export_dir) / EXPORT_FILE} fits TrainConfig.max_length={config.max_length}; raise it."
        )
    record = run_record(config, export_dir, base_model_dir, len(records), skipped)
    existing = checkpoint_dirs(output_dir)
    if existing and not resume:
        raise FileExistsError(
            f"{output_dir} already holds {existing[-1].name}: pass resume=True or use a new output_dir."
        )
    checkpoint = existing[-1] if existing else None
    if checkpoint is not None:
        _check_same_run(checkpoint, record, world)

    torch.manual_seed(config.seed)  # initial LoRA weights; restored RNG state takes over on resume
    model = _load_model(config, base_model_dir)
    if checkpointing:
        # Non-reentrant checkpointing needs no input grads, so frozen embeddings (LoRA) are fine.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    raw_optimizer = _optimizer(model, config)
    total_steps, batches_of = step_schedule(len(records), config, world)
    # Not passed to prepare(): accelerate's scheduler wrapper steps once per process.
    scheduler = get_scheduler(
        config.lr_scheduler,
        raw_optimizer,
        num_warmup_steps=math.ceil(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    accelerator.register_for_checkpointing(scheduler)
    model, optimizer = accelerator.prepare(model, raw_optimizer)
    state = _saved_state(checkpoint) if checkpoint is not None else _State()
    resumed_from = state.step
    saved = list(existing)

    pad_id = processor.tokenizer.pad_token_id
    if pad_id is None:  # padded positions are masked out of attention and loss, so any id works
        pad_id = processor.tokenizer.eos_token_id
    plan = [[rank_share(batch, rank, config.batch_size) for batch in batches_of(step)] for step in range(state.step, total_steps)]
    loader = torch.utils.data.DataLoader(
        FeidDataset(records, processor, config.max_length),
        batch_sampler=[share for step_shares in plan for share, _ in step_shares],
        collate_fn=partial(collate, pad_token_id=pad_id),
        num_workers=config.dataloader_workers,
    )
    micro_batches: Iterator[dict[str, torch.Tensor]] = iter(loader)
    if checkpoint is not None:
        # After iter(loader), which draws a seed from the global RNG: the saved
        # state was taken after that draw too, so dropout replays exactly.
        accelerator.load_state(str(checkpoint / ACCELERATE_DIR))
    trainable = [p for p in model.parameters() if p.requires_grad]
    loop_started = time.perf_counter()
    for step_shares in plan:
        group = [next(micro_batches) for _ in step_shares]
        loss, answer_tokens, input_tokens = accumulate_gradients(
            model, group, accelerator.device, bf16, accelerator=accelerator, stand_ins=[s for _, s in step_shares]
        )
        accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
        learning_rate = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.answer_tokens += answer_tokens
        state.tokens_seen += input_tokens
        state.losses.append(loss)
        if state.step % config.save_steps == 0 or state.step == total_steps:
            saved.append(_save(accelerator, output_dir, model, processor, state, record, config.use_lora))
        if progress is not None and accelerator.is_main_process:
            elapsed = time.perf_counter() - loop_started
            progress(StepLog(state.step, total_steps, state.losses[-1], learning_rate, state.tokens_seen, elapsed))
    train_time = time.perf_counter() - loop_started

    final_dir = output_dir / "final"
    accelerator.wait_for_everyone()
    # Gathered from the shards under FSDP / ZeRO-3 (a collective: every process takes part).
    full_state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        shutil.rmtree(final_dir, ignore_errors=True)
        unwrapped = accelerator.unwrap_model(model)
        # LoRA is merged into the base weights for the final model: evaluation and
        # serving (vLLM) then load one plain checkpoint; the adapter alone stays in
        # the last checkpoint-N.
        if config.use_lora:
            unwrapped.merge_and_unload().save_pretrained(final_dir)
        else:
            unwrapped.save_pretrained(final_dir, state_dict=full_state)
        processor.save_pretrained(final_dir)
        (final_dir / RECORD_FILE).write_text(json.dumps(record, indent=2))
    result = TrainResult(
        final_dir=final_dir,
        checkpoint_dirs=sorted(set(saved), key=lambda p: int(p.name.split("-")[1])),
        steps=state.step,
        first_loss=state.losses[0],
        last_loss=state.losses[-1],
        losses=state.losses,
        tokens_seen=state.tokens_seen,
        answer_tokens=state.answer_tokens,
        wall_time_s=time.perf_counter() - started,
        train_time_s=train_time,
        resumed_from_step=resumed_from,
        skipped_ids=skipped,
        world_size=world,
    )
    if accelerator.is_main_process:
        (final_dir / RESULT_FILE).write_text(json.dumps(asdict(result), indent=2, default=str))
    accelerator.wait_for_everyone()
    return result

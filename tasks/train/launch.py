"""Distributed fine-tuning as a subprocess: the `accelerate launch` command line and the entry point it runs.

`launch_command` turns (processes, strategy or accelerate config file, mixed
precision, machines) into an `accelerate launch` argv; the entry point
(`python -m tasks.train.launch ...`) runs `finetune` in every process and the
main process prints one JSON line per optimizer step and one with the result,
each prefixed with a marker, for the caller (the fine-tune flow) to stream
into its logs and artifacts.

Strategies: `ddp` replicates the model; `fsdp` shards weights, gradients
and optimizer states per decoder layer with PyTorch FSDP2; `deepspeed-zero3`
shards the same through DeepSpeed stage 3. `ddp` and `fsdp` also run as
several CPU processes over gloo (accelerate enables FSDP on accelerators only;
tasks.train.finetune switches it on for CPU processes launched with the fsdp
flags); `deepspeed-zero3` is for GPUs (its tests run CPU processes through
a stand-in for accelerate's GPU process setup). Anything else — multi-node
rendezvous, offloading, other ZeRO stages — goes in an accelerate config file
(`accelerate config`), passed as config_file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Literal

STEP_MARKER = "SEKE_STEP "
RESULT_MARKER = "SEKE_RESULT "
Strategy = Literal["ddp", "fsdp", "deepspeed-zero3"]
STRATEGIES: tuple[Strategy, ...] = ("ddp", "fsdp", "deepspeed-zero3")
# FSDP wraps (and gathers) one decoder layer at a time: the LM's and the vision tower's.
FSDP_LAYERS = "Qwen2DecoderLayer,SiglipEncoderLayer"


def launch_command(
    *,
    processes: int,
    strategy: Strategy | None = "ddp",
    config_file: Path | None = None,
    bf16: bool = False,
    machines: int = 1,
    machine_rank: int = 0,
    main_process_ip: str | None = None,
    main_process_port: int | None = None,
    cuda: bool | None = None,
) -> tuple[list[str], dict[str, str]]:
    """`accelerate launch` arguments up to (not including) the script, and environment variables to add.

    processes counts all machines; with a config file, its counts apply. Several CPU processes use accelerate's
    multi-process launcher with ACCELERATE_USE_CPU (its `--cpu` flag starts a
    single process), which gives DDP (or FSDP) over gloo.
    """
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    if processes < 1 or machines < 1 or not 0 <= machine_rank < machines:
        raise ValueError(f"need processes >= 1, machines >= 1 and 0 <= machine_rank < machines; got {processes}, {machines}, {machine_rank}")
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    env: dict[str, str] = {}
    if config_file is not None:
        if not Path(config_file).is_file():
            raise FileNotFoundError(f"accelerate config file {config_file} does not exist (write one with `accelerate config`)")
        command += ["--config_file", str(config_file)]
    else:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES} or an accelerate config file, got {strategy!r}")
        if strategy == "deepspeed-zero3" and not cuda:
            raise ValueError("strategy 'deepspeed-zero3' needs GPUs; use 'ddp' or 'fsdp' to train with several CPU processes")
        if not cuda:
            env["ACCELERATE_USE_CPU"] = "true"
        if strategy == "ddp":
            command += ["--multi_gpu"] if processes > 1 or machines > 1 else []
        elif strategy == "fsdp":
            command += [
                "--use_fsdp", "--fsdp_version", "2", "--fsdp_reshard_after_forward", "true",
                "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_transformer_layer_cls_to_wrap", FSDP_LAYERS,
                "--fsdp_state_dict_type", "SHARDED_STATE_DICT", "--fsdp_cpu_ram_efficient_loading", "true",
            ]  # fmt: skip
        else:
            command += ["--use_deepspeed", "--zero_stage", "3", "--gradient_accumulation_steps", "1", "--zero3_save_16bit_model", "true"]
        command += ["--mixed_precision", "bf16" if bf16 else "no", "--dynamo_backend", "no"]
    if config_file is None:  # a config file carries its own process and machine counts
        command += ["--num_processes", str(processes), "--num_machines", str(machines)]
    if machines > 1:
        if main_process_ip is None:
            raise ValueError("several machines need main_process_ip (the address of machine 0)")
        command += ["--machine_rank", str(machine_rank), "--main_process_ip", main_process_ip]
    if main_process_port is not None:
        command += ["--main_process_port", str(main_process_port)]
    return command, env


def entry_arguments(config: dict, export_dir: Path, base_model_dir: Path, output_dir: Path) -> list[str]:
    """The script part of the command: this module with the run's inputs."""
    return [
        "-m", "tasks.train.launch", "--train-config", json.dumps(config),
        "--export-dir", str(export_dir), "--base-model-dir", str(base_model_dir), "--output-dir", str(output_dir),
    ]  # fmt: skip


def read_events(lines: Iterable[str], on_step: Callable[[dict], None], on_other: Callable[[str], None]) -> dict | None:
    """Feed the child's output lines to callbacks; returns the result line's object (None if it never came)."""
    result = None
    for line in lines:
        line = line.rstrip("\n")
        if line.startswith(STEP_MARKER):
            on_step(json.loads(line[len(STEP_MARKER) :]))
        elif line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER) :])
        elif line.strip():
            on_other(line)
    return result


def main(argv: list[str] | None = None) -> None:
    from tasks.train.finetune import StepLog, TrainConfig, finetune

    parser = argparse.ArgumentParser(description="Run tasks.train.finetune in this process (under accelerate launch).")
    parser.add_argument("--train-config", required=True, help="JSON object of TrainConfig fields")
    parser.add_argument("--export-dir", type=Path, required=True)
    parser.add_argument("--base-model-dir", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    config = TrainConfig.from_dict(json.loads(args.train_config))

    last = {"tokens": None, "elapsed": 0.0}

    def report(log: StepLog) -> None:
        # Over the last step only: tokens_seen spans the whole run, elapsed_s this process's loop.
        previous = last["tokens"] if last["tokens"] is not None else log.tokens_seen
        seconds = log.elapsed_s - last["elapsed"]
        tokens_per_s = (log.tokens_seen - previous) / seconds if last["tokens"] is not None and seconds > 0 else None
        last.update(tokens=log.tokens_seen, elapsed=log.elapsed_s)
        print(STEP_MARKER + json.dumps({**asdict(log), "tokens_per_s": tokens_per_s}), flush=True)

    result = finetune(config, args.export_dir, args.base_model_dir, args.output_dir, progress=report)
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        print(RESULT_MARKER + json.dumps(asdict(result), default=str), flush=True)
    state.destroy_process_group()
    # Interpreter shutdown still tears down torch.distributed's C++ state in an order that now and
    # then aborts a process ("terminate called without an active exception", no Python frame left)
    # after a sharded run, failing a run that finished. Every file is written and every process is
    # past the final barrier, so the process leaves without that teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

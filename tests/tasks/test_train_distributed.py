"""Two CPU processes (gloo) under `accelerate launch`, with DDP, FSDP2 and DeepSpeed ZeRO-3, against one
process: same losses, exact resume after a kill.

Tolerance: the two runs sum the same per-token losses and gradients in a
different order (per process, then all-reduced or reduce-scattered), so
losses agree to float32 rounding, well within rel 1e-4 over these few steps.
A resumed run replays the same arithmetic in the same order, so it agrees to
rel 1e-6.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")
torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from tasks.train.finetune import TrainConfig, finetune  # noqa: E402
from transformers import LlavaOnevisionForConditionalGeneration  # noqa: E402
from tasks.train.launch import entry_arguments, launch_command, read_events  # noqa: E402
from tasks.train.tiny import build_tiny_llava  # noqa: E402
from tests.tasks.test_train import EXAMPLES, _write_export  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEEPSPEED_ON_CPU = Path(__file__).with_name("deepspeed_on_cpu.py")
# Global batch 4 = 2 examples per micro-batch × 2 accumulated; two processes take one example each.
CONFIG = dict(learning_rate=3e-3, warmup_ratio=0.0, grad_accumulation=2, max_steps=8, save_steps=3, seed=1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(
    config: TrainConfig, export_dir: Path, base_dir: Path, output_dir: Path, *, strategy: str = "ddp", kill_at_step: int | None = None
):
    """Two processes on CPU; returns (result or None if killed, step lines seen)."""
    script = entry_arguments(config.to_dict(), export_dir, base_dir, output_dir)
    if strategy == "deepspeed-zero3":  # the GPU command, run by CPU processes (see deepspeed_on_cpu.py)
        command, launch_env = launch_command(processes=2, strategy=strategy, cuda=True, main_process_port=_free_port())
        command += [str(DEEPSPEED_ON_CPU), *script[2:]]
        launch_env = {**launch_env, "DS_ACCELERATOR": "cpu"}
    else:
        command, launch_env = launch_command(processes=2, strategy=strategy, cuda=False, main_process_port=_free_port())
        command += script
    env = {**os.environ, **launch_env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), "OMP_NUM_THREADS": "1"}
    steps: list[dict] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, cwd=ROOT, env=env, start_new_session=True
    ) as process:
        output: list[str] = []

        def on_step(event: dict) -> None:
            steps.append(event)
            if event["step"] == kill_at_step:  # like a lost machine: the launcher and both workers at once
                launcher = psutil.Process(process.pid)
                for victim in [launcher, *launcher.children(recursive=True)]:
                    victim.send_signal(signal.SIGKILL)

        result = read_events(process.stdout, on_step, output.append)
        code = process.wait()
    if kill_at_step is None:
        assert code == 0 and result is not None, "\n".join(output[-200:])
    return result, steps


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    export_dir = tmp_path_factory.mktemp("export")
    _write_export(export_dir)
    corpus = [question for _, question, _ in EXAMPLES] + [answer for *_, answer in EXAMPLES]
    return export_dir, build_tiny_llava(tmp_path_factory.mktemp("base"), corpus, seed=0)


@pytest.fixture(scope="module")
def one_process(inputs, tmp_path_factory):
    """One process's run per gradient accumulation (DeepSpeed takes 1, the others 2)."""
    export_dir, base_dir = inputs
    runs = {}

    def run(grad_accumulation: int):
        if grad_accumulation not in runs:
            config = TrainConfig(batch_size=2, **{**CONFIG, "grad_accumulation": grad_accumulation})
            runs[grad_accumulation] = finetune(config, export_dir, base_dir, tmp_path_factory.mktemp("one"))
        return runs[grad_accumulation]

    return run


def test_launch_command_names_the_strategy():
    ddp_cpu, env = launch_command(processes=2, strategy="ddp", cuda=False)
    assert env == {"ACCELERATE_USE_CPU": "true"} and "--multi_gpu" in ddp_cpu and ddp_cpu[ddp_cpu.index("--num_processes") + 1] == "2"
    fsdp_cpu, env = launch_command(processes=2, strategy="fsdp", cuda=False)
    assert env == {"ACCELERATE_USE_CPU": "true"} and "--use_fsdp" in fsdp_cpu and "--multi_gpu" not in fsdp_cpu
    fsdp, env = launch_command(processes=8, strategy="fsdp", bf16=True, cuda=True)
    assert env == {}
    assert "--use_fsdp" in fsdp and fsdp[fsdp.index("--fsdp_version") + 1] == "2"
    assert fsdp[fsdp.index("--mixed_precision") + 1] == "bf16"
    zero3, _ = launch_command(processes=16, strategy="deepspeed-zero3", cuda=True, machines=2, machine_rank=1, main_process_ip="10.0.0.1")
    assert zero3[zero3.index("--zero_stage") + 1] == "3" and zero3[zero3.index("--machine_rank") + 1] == "1"
    with pytest.raises(ValueError, match="needs GPUs"):
        launch_command(processes=2, strategy="deepspeed-zero3", cuda=False)
    with pytest.raises(ValueError, match="main_process_ip"):
        launch_command(processes=4, strategy="ddp", cuda=True, machines=2)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed-zero3"])
def test_two_processes_match_one_and_resume_after_a_kill(strategy, inputs, one_process, tmp_path):
    if strategy == "deepspeed-zero3":
        pytest.importorskip("deepspeed")
    export_dir, base_dir = inputs
    grad_accumulation = 1 if strategy == "deepspeed-zero3" else CONFIG["grad_accumulation"]
    one = one_process(grad_accumulation)
    two_config = TrainConfig(batch_size=1, **{**CONFIG, "grad_accumulation": grad_accumulation})  # same global batch
    two, steps = _launch(two_config, export_dir, base_dir, tmp_path / "two", strategy=strategy)
    assert two["world_size"] == 2 and [s["step"] for s in steps] == list(range(1, 9))
    assert two["losses"] == pytest.approx(one.losses, rel=1e-4)
    assert two["tokens_seen"] == one.tokens_seen and two["answer_tokens"] == one.answer_tokens
    assert all(s["tokens_per_s"] is None or s["tokens_per_s"] > 0 for s in steps)
    saved = tmp_path / "two" / "checkpoint-3" / "accelerate"
    if strategy == "fsdp":  # each process wrote its own shard of the weights and of the optimizer state
        assert sorted(p.name for p in (saved / "pytorch_model_fsdp_0").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
        assert sorted(p.name for p in (saved / "optimizer_0").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    elif strategy == "deepspeed-zero3":
        assert sorted(p.name for p in (saved / "pytorch_model").glob("*.pt")) == [
            f"zero_pp_rank_{rank}_mp_rank_00_{part}_states.pt" for rank in (0, 1) for part in ("model", "optim")
        ]
    else:
        assert (saved / "model.safetensors").is_file() and (saved / "optimizer.bin").is_file()

    run = tmp_path / "killed"
    killed, seen = _launch(two_config, export_dir, base_dir, run, strategy=strategy, kill_at_step=4)
    assert killed is None and seen[-1]["step"] >= 4 and not (run / "final").exists()
    state = json.loads((run / "checkpoint-3" / "training_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 3
    assert sorted(p.name for p in (run / "checkpoint-3" / "accelerate").glob("random_states_*.pkl")) == [
        "random_states_0.pkl", "random_states_1.pkl",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="written by 2 processes"):
        finetune(two_config, export_dir, base_dir, run)  # one process may not resume a two-process run
    resumed, _ = _launch(two_config, export_dir, base_dir, run, strategy=strategy)
    assert resumed["resumed_from_step"] in (3, 6) and resumed["steps"] == 8
    assert resumed["losses"] == pytest.approx(two["losses"], rel=1e-6)
    assert resumed["last_loss"] == pytest.approx(two["last_loss"], rel=1e-6)

    # The final model is gathered from the shards: one plain checkpoint that scores like the run's last weights.
    final = LlavaOnevisionForConditionalGeneration.from_pretrained(str(tmp_path / "two" / "final"))
    reference = LlavaOnevisionForConditionalGeneration.from_pretrained(str(run / "final"))
    for (name, weight), (_, other) in zip(final.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.allclose(weight, other, rtol=1e-5, atol=1e-6), name

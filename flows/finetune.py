"""The fine-tune flow: LLaVA-OneVision on an FEID export (paper §4.2: full SFT, lr 1e-5, cosine).

Inputs come by id and URI, so the flow runs the same on the embedded default
(local store, CPU) and on a GPU worker of the `gpu` work pool: the export and
the base checkpoint are fetched from the object store, checkpoints are pushed
back as they are written, and the database records the lineage
export → training run → checkpoints. Re-running a name resumes it: from the
local checkpoints, or from the store's when the local disk is new.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from flows.progress import report
from models.names import Name
from models.orm import Checkpoint, Export, TrainingRun
from core.config import Settings, get_settings
from core.db import session_factory
from core.store import ObjectStore, confined_path, download_prefix, open_store, upload_dir
from core.version import code_version
from flows.deployments import trigger
from tasks.checkpoints import STORE_PREFIX, local_checkpoint


def _model_prefix(name: str, part: str) -> str:
    return f"models/{name}/{part}"


def fetch_export(store: ObjectStore, export: Export, cache: Path) -> Path:
    """The export as a local directory (downloaded once), with referenced images fetched too."""
    local = cache / f"export-{export.id}"
    if not (local / "feid.jsonl").exists():
        download_prefix(store, f"exports/{export.manifest['run']}", local)
    if export.manifest.get("images") == "object-store keys":
        for line in (local / "feid.jsonl").read_text().splitlines():
            key = json.loads(line)["image"]
            target = confined_path(local, key)  # an export's keys never write outside its folder
            if not target.exists():
                store.download_file(key, target)
    return local


def resolve_base_model(
    base_model: str | None, *, store: ObjectStore, work: Path, cache: Path, name: str, export_dir: Path
) -> tuple[Path, str]:
    """(local dir, recorded name) of the base checkpoint.

    None builds the tiny LLaVA-OneVision (the embedded default: no hub here) and
    stores it, so a resume elsewhere trains from the same weights; `store:<prefix>`
    fetches a checkpoint from the object store; anything else is a local path.
    """
    from tasks.train.data import load_export
    from tasks.train.tiny import build_tiny_llava

    if base_model is None:
        local, prefix = work / "base", _model_prefix(name, "base")
        if not (local / "config.json").exists():
            if any(store.list_keys(prefix + "/")):
                download_prefix(store, prefix, local)
            else:
                corpus = [turn.text for record in load_export(export_dir) for turn in record.turns]
                build_tiny_llava(local, corpus)
                upload_dir(store, local, prefix)
        return local, f"tiny-llava-onevision ({store.uri(prefix)})"
    local = local_checkpoint(base_model, store, cache)
    if base_model.startswith(STORE_PREFIX):
        return local, store.uri(base_model.removeprefix(STORE_PREFIX))
    return local, str(local)


def _open_training_run(settings: Settings, name: str, export_id: int, config: dict[str, Any]) -> tuple[int, dict | None]:
    """Create the run, or find it; returns (id, result) where result is set when it already completed."""
    with session_factory(settings).begin() as session:
        if session.get(Export, export_id) is None:
            raise ValueError(f"no export with id {export_id}; run `seke export RUN` first")
        run = session.scalars(select(TrainingRun).where(TrainingRun.name == name)).one_or_none()
        if run is None:
            run = TrainingRun(name=name, export_id=export_id, base_model="", config=config, code_version=code_version())
            session.add(run)
            session.flush()
        elif run.export_id != export_id or run.config != config:
            raise ValueError(f"training run {name!r} exists with another export or config; choose a new name")
        return run.id, (run.result if run.status == "completed" else None)


def _restore_latest_checkpoint(sessions, store: ObjectStore, run_id: int, name: str, output_dir: Path) -> None:
    """On a machine without local checkpoints, continue from the newest one in the store."""
    with sessions() as session:
        latest = session.scalars(
            select(Checkpoint).where(Checkpoint.training_run_id == run_id).order_by(Checkpoint.step.desc()).limit(1)
        ).one_or_none()
    if latest is not None:
        checkpoint = f"checkpoint-{latest.step}"
        download_prefix(store, _model_prefix(name, checkpoint), output_dir / checkpoint)


def _train_in_subprocess(command: list[str], launch_env: dict[str, str], on_step, logger) -> dict[str, Any]:
    """Run the distributed job (`accelerate launch ...`), streaming its step lines; its result line back."""
    from tasks.train.launch import read_events

    tail: list[str] = []

    def other(line: str) -> None:
        tail.append(line)
        del tail[:-40]
        logger.debug("%s", line)

    # The workers import this checkout's packages whatever the worker's working directory.
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, **launch_env, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    # Its own session: cancelling the flow run then stops the launcher and every worker process.
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True, env=env
    ) as process:
        try:
            result = read_events(process.stdout, on_step, other)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        code = process.wait()
    if code != 0 or result is None:
        raise RuntimeError(f"distributed fine-tune exited with {code}: {' '.join(command)}\n" + "\n".join(tail[-20:]))
    return result


class FinetuneResult(BaseModel):
    """A completed training run; stored as the run's `result`, so a re-run returns it without training."""

    training_run_id: int
    final_uri: str
    final_model: str  # `store:<prefix>`: what the benchmark flow takes as its model
    steps: int
    first_loss: float
    last_loss: float
    tokens_seen: int
    train_time_s: float
    skipped_ids: list[str]
    world_size: int = 1


@flow(name="finetune", flow_run_name="finetune-{name}")
def finetune_flow(
    name: Name,
    export_id: int,
    base_model: str | None = None,
    train_config: dict[str, Any] | None = None,
    then_benchmark: dict[str, Any] | None = None,
    processes: int = 1,
    strategy: str = "ddp",
    accelerate_config: str | None = None,
    machines: int = 1,
    machine_rank: int = 0,
    main_process_ip: str | None = None,
    main_process_port: int | None = None,
) -> FinetuneResult:
    """Fine-tune on export `export_id`; returns the training result with the final model's URI.

    One process trains in the flow's own process. Several (`processes` over
    all `machines`, with `strategy` ddp / fsdp / deepspeed-zero3, or an
    `accelerate_config` file) run as an `accelerate launch` subprocess whose
    step, loss, learning rate and tokens/s stream into the flow's logs and a
    progress artifact. `then_benchmark` (benchmark flow parameters) triggers the
    benchmark deployment when training completes: the deployment path of the
    trigger chain.
    """
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # before transformers loads: the flow logs progress; bars would interleave with it
    import torch
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    from tasks.train.finetune import TrainConfig, checkpoint_dirs, finetune
    from tasks.train.launch import entry_arguments, launch_command

    logger = get_run_logger()
    settings = get_settings()
    if base_model is None and train_config is None:
        # The tiny random model (no base checkpoint given) cannot learn at the paper's lr 1e-5,
        # which stays the default for real models.
        from tasks.train import DEMO_TRAIN_CONFIG

        logger.info("no base model and no train config: the tiny model trains with %s", DEMO_TRAIN_CONFIG)
        train_config = DEMO_TRAIN_CONFIG
    config = TrainConfig.from_dict(train_config or {})
    run_id, finished = _open_training_run(settings, name, export_id, config.to_dict())
    if finished is not None:
        logger.info("training run %s already completed; not training again", name)
        result = FinetuneResult.model_validate(finished)
    else:
        store = open_store(settings)
        sessions = session_factory(settings)
        work = settings.resolved_state_dir / "training" / name
        with sessions() as session:
            export = session.get(Export, export_id)
            export_dir = fetch_export(store, export, settings.resolved_state_dir / "cache")
        base_dir, base_name = resolve_base_model(
            base_model, store=store, work=work, cache=settings.resolved_state_dir / "cache" / "models", name=name,
            export_dir=export_dir,
        )  # fmt: skip
        output_dir = work / "output"
        if not (output_dir.exists() and checkpoint_dirs(output_dir)):
            _restore_latest_checkpoint(sessions, store, run_id, name, output_dir)
        with sessions() as session:
            recorded = select(Checkpoint.step).where(Checkpoint.training_run_id == run_id)
            uploaded = {f"checkpoint-{step}" for step in session.scalars(recorded)}

        def push_new_checkpoints() -> None:
            """Upload checkpoints as they appear, so a new machine can resume from the store."""
            for checkpoint in checkpoint_dirs(output_dir):
                if checkpoint.name in uploaded:
                    continue
                uri = upload_dir(store, checkpoint, _model_prefix(name, checkpoint.name))
                step = int(checkpoint.name.rsplit("-", 1)[1])
                with sessions.begin() as session:
                    session.execute(
                        insert(Checkpoint)
                        .values(training_run_id=run_id, step=step, uri=uri)
                        .on_conflict_do_nothing(index_elements=["training_run_id", "step"])
                    )
                uploaded.add(checkpoint.name)

        progress_id = create_progress_artifact(0.0, key=f"finetune-{name}".lower().replace("_", "-"), description="starting")
        last = {"tokens": None, "elapsed": 0.0}

        def on_step(log: dict[str, Any]) -> None:
            report("finetune", log["step"], log["total_steps"])
            # tokens/s over the last step (the launcher's own figure when it sends one).
            rate = log.get("tokens_per_s")
            if rate is None and last["tokens"] is not None and log["elapsed_s"] > last["elapsed"]:
                rate = (log["tokens_seen"] - last["tokens"]) / (log["elapsed_s"] - last["elapsed"])
            last.update(tokens=log["tokens_seen"], elapsed=log["elapsed_s"])
            line = f"step {log['step']}/{log['total_steps']} loss {log['loss']:.4f} lr {log['learning_rate']:.2e}"
            line += f" {rate:,.0f} tokens/s" if rate else ""
            if log["step"] == 1 or log["step"] % 10 == 0 or log["step"] == log["total_steps"]:
                logger.info("%s", line)
                update_progress_artifact(progress_id, 100 * log["step"] / log["total_steps"], description=line)
            push_new_checkpoints()

        if processes == 1 and accelerate_config is None and machines == 1:
            trained = asdict(finetune(config, export_dir, base_dir, output_dir, progress=lambda log: on_step(asdict(log))))
        else:
            command, launch_env = launch_command(
                processes=processes, strategy=strategy, config_file=Path(accelerate_config) if accelerate_config else None,
                bf16=config.bf16 if config.bf16 is not None else torch.cuda.is_available(), machines=machines,
                machine_rank=machine_rank, main_process_ip=main_process_ip, main_process_port=main_process_port,
            )  # fmt: skip
            command += entry_arguments(config.to_dict(), export_dir, base_dir, output_dir)
            logger.info("launching %s processes: %s", processes, " ".join(command))
            trained = _train_in_subprocess(command, launch_env, on_step, logger)
        push_new_checkpoints()  # the checkpoint written after the last step
        final_uri = upload_dir(store, Path(trained["final_dir"]), _model_prefix(name, "final"))
        result = FinetuneResult(
            training_run_id=run_id,
            final_uri=final_uri,
            final_model=STORE_PREFIX + _model_prefix(name, "final"),
            world_size=trained["world_size"],
            **{key: trained[key] for key in ("steps", "first_loss", "last_loss", "tokens_seen", "train_time_s", "skipped_ids")},
        )
        with sessions.begin() as session:
            run = session.get(TrainingRun, run_id)
            run.base_model = base_name
            run.status = "completed"
            run.device = "cuda" if torch.cuda.is_available() else "cpu"
            run.final_uri = final_uri
            run.result = result.model_dump(mode="json")
            run.finished_at = dt.datetime.now(dt.UTC)
        logger.info("training run %s: loss %.3f → %.3f in %s steps", name, result.first_loss, result.last_loss, result.steps)
    if then_benchmark is not None:
        trigger("benchmark", {**then_benchmark, "model": result.final_model, "training_run_id": run_id}, key=f"{name}:benchmark")
    return result

"""The fine-tune flow with two processes (an accelerate launch subprocess, FSDP2 over gloo) and the benchmark of its model.

Lineage stays export → training run → checkpoints → benchmark; the checkpoints
the subprocess writes are uploaded and recorded as they appear. FSDP is the
demanding case: the checkpoints hold one shard per process, and the model the
benchmark scores is gathered from the shards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from core.config import Settings
from core.db import session_scope
from models.orm import BenchmarkRun, Checkpoint, Image, TrainingRun
from simulator.server import SimulatorConfig, running_simulator
from tasks.annotate import AnnotateConfig
from tests.helpers import prepared_settings, use

pytest.importorskip("accelerate")
pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

TRAIN = {"learning_rate": 3e-3, "max_steps": 4, "batch_size": 2, "save_steps": 2, "warmup_ratio": 0.0}


@pytest.fixture
def fresh(postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch) -> Settings:
    from tasks.demo_data import write_demo_data

    demo = tmp_path_factory.mktemp("demo")
    write_demo_data(demo, n=40, seed=5)
    settings = prepared_settings(postgres_admin_url, tmp_path, demo)
    use(settings, monkeypatch)
    return settings


def test_two_process_fine_tune_is_recorded_and_benchmarked(fresh: Settings) -> None:
    from flows.annotate import annotate_flow
    from flows.benchmark import benchmark_flow
    from flows.finetune import finetune_flow
    from flows.pipeline import export_for

    with running_simulator(SimulatorConfig()) as base_url:
        annotate_flow(run_name="dist", limit=8, config=AnnotateConfig(rewrite_with_llm=False), base_url=base_url, model="seke-simulator")
    export_id = export_for("dist")
    trained = finetune_flow(name="dist-finetune", export_id=export_id, train_config=TRAIN, processes=2, strategy="fsdp")
    assert trained.world_size == 2 and trained.steps == 4
    scored = benchmark_flow(name="dist-feab", model=trained.final_model, training_run_id=trained.training_run_id, max_new_tokens=40)
    with session_scope(fresh) as session:
        run = session.get(TrainingRun, trained.training_run_id)
        assert run.status == "completed" and run.export_id == export_id
        steps = session.scalars(select(Checkpoint.step).where(Checkpoint.training_run_id == run.id).order_by(Checkpoint.step)).all()
        assert steps == [2, 4]
        benchmark = session.scalars(select(BenchmarkRun).where(BenchmarkRun.name == "dist-feab")).one()
        assert benchmark.training_run_id == run.id and benchmark.status == "completed"
        feab = session.scalar(select(Image.id).where(Image.split == "FEAB").limit(1))
        assert feab is not None and scored.scores.n > 0
    # Sharded state (a weight shard, an optimizer shard and an RNG file per process) went to the store with the checkpoint.
    stored = fresh.resolved_state_dir.parent / "store" / "models" / "dist-finetune" / "checkpoint-4" / "accelerate"
    assert sorted(p.name for p in stored.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (stored / part).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]

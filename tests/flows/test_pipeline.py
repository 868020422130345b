"""The downstream chain end to end: export → fine-tune (tiny model, CPU) → FEAB benchmark, lineage,
idempotent re-runs, endpoint benchmarking over HTTP, and deployment triggers that never duplicate."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from models.orm import BenchmarkAnswer, BenchmarkRun, Checkpoint, Export, Image, TrainingRun
from core.config import Settings
from core.db import session_scope
from simulator.server import SimulatorConfig, running_simulator
from tasks.annotate import AnnotateConfig

pytestmark = pytest.mark.usefixtures("prefect_api")

#: Enough steps for the tiny model to learn something, few enough for CI (2 cores).
TRAIN = {"learning_rate": 3e-3, "max_steps": 12, "batch_size": 4, "save_steps": 5}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tasks.demo_data import write_demo_data

    root = tmp_path_factory.mktemp("demo")
    write_demo_data(root, n=80, seed=21)
    return root



def test_pipeline_records_lineage_and_reruns_without_redoing_work(fresh: Settings) -> None:
    from flows.pipeline import pipeline_flow

    config = AnnotateConfig(rewrite_with_llm=False)
    with running_simulator(SimulatorConfig()) as base_url:
        kwargs = dict(run_name="chain", limit=24, annotate_config=config, base_url=base_url, model="seke-simulator", simulated=True, train_config=TRAIN)
        first = pipeline_flow(**kwargs)
        second = pipeline_flow(**kwargs)

    trained = first.finetune
    assert trained.steps == 12 and trained.last_loss < trained.first_loss
    assert second.export_id == first.export_id
    assert second.finetune.training_run_id == trained.training_run_id
    assert first.annotate.simulated and not first.benchmark.simulated  # the benchmark scored the trained checkpoint
    with session_scope(fresh) as session:
        export = session.get(Export, first.export_id)
        assert "offline simulator" in export.manifest["note"]
        assert export.records == 24 and export.uri.endswith("exports/chain")
        run = session.get(TrainingRun, trained.training_run_id)
        assert run.status == "completed" and run.export_id == export.id and run.device == "cpu"
        assert session.scalar(select(func.count(TrainingRun.id))) == 1
        steps = session.scalars(select(Checkpoint.step).where(Checkpoint.training_run_id == run.id).order_by(Checkpoint.step)).all()
        assert steps == [5, 10, 12]
        benchmark = session.scalars(select(BenchmarkRun)).one()
        assert benchmark.training_run_id == run.id and benchmark.status == "completed"
        feab = session.scalar(select(func.count(Image.id)).where(Image.split == "FEAB"))
        assert session.scalar(select(func.count(BenchmarkAnswer.id))) == feab == benchmark.scores["n"]
    # The checkpoint carries its own record (config + data hash).
    final = fresh.resolved_state_dir / "training" / "chain-finetune" / "output" / "final"
    assert json.loads((final / "train_config.json").read_text())["train_config"]["max_steps"] == 12


def test_benchmark_scores_an_openai_compatible_endpoint(fresh: Settings) -> None:
    from flows.benchmark import benchmark_flow

    with running_simulator(SimulatorConfig()) as base_url:
        result = benchmark_flow(name="sim-zero-shot", model="seke-simulator", kind="endpoint", base_url=base_url, simulated=True)
    scores = result.scores
    assert scores.n > 0 and scores.n_unparseable == 0
    assert 0.3 <= scores.expression_accuracy <= 1.0
    assert result.simulated and "GPT-4o* (paper)" in result.table and "offline simulator" in result.table
    assert all(Path(chart).stat().st_size > 1000 for chart in result.charts)
    with session_scope(fresh) as session:
        methods = session.scalars(select(BenchmarkAnswer.parse_method)).all()
    assert set(methods) <= {"json", "text"}


def test_retried_deployment_trigger_does_not_start_a_duplicate() -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    from flows.deployments import build_deployment, trigger

    async def create_pool() -> None:
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(name="gpu", type="process"), overwrite=True)

    asyncio.run(create_pool())
    # The deployment exactly as deploy_all() makes it (later tests re-deploy it in place).
    deployment_id = build_deployment("finetune").apply()
    parameters = {"name": "retried", "export_id": 1}
    first = trigger("finetune", parameters, key="retried:finetune")
    again = trigger("finetune", parameters, key="retried:finetune")
    other = trigger("finetune", parameters, key="another:finetune")
    assert first.id == again.id != other.id

    async def count_runs() -> int:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                sort=FlowRunSort.ID_DESC,
                limit=10,
            )
            return len(runs)

    assert asyncio.run(count_runs()) == 2


def test_pipeline_via_deployments_says_what_it_submitted_and_what_was_already_done(fresh: Settings) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.states import Completed

    from flows.finetune import finetune_flow
    from flows.pipeline import pipeline_flow

    async def create_pool() -> None:
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(name="gpu", type="process"), overwrite=True)

    asyncio.run(create_pool())
    finetune_flow.to_deployment(name="finetune", work_pool_name="gpu").apply()
    config = AnnotateConfig(rewrite_with_llm=False)
    with running_simulator(SimulatorConfig()) as base_url:
        kwargs = dict(run_name="submitted", limit=4, annotate_config=config, base_url=base_url, model="seke-simulator", via_deployments=True)
        first = pipeline_flow(**kwargs, return_state=True)
        again = pipeline_flow(**kwargs, return_state=True)
        flow_run_id = first.result().finetune_flow_run_id
        # A worker finished the fine-tune in the meantime: a re-run says so instead of "submitted".
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run_id, Completed(), force=True)
        done = pipeline_flow(**kwargs, return_state=True)

    assert first.name == "Submitted" and first.message.startswith("submitted fine-tune flow run")
    assert flow_run_id in first.message and "starts the benchmark" in first.message
    assert again.name == "Already submitted" and again.message.startswith("already submitted:")
    assert done.message.startswith("already done: fine-tune flow run") and done.message.endswith("Completed")
    assert again.result().finetune_flow_run_id == done.result().finetune_flow_run_id == flow_run_id


def test_answers_no_parser_can_read_go_to_the_llm_parser(fresh: Settings, tmp_path: Path) -> None:
    from flows.benchmark import benchmark_flow
    from tasks.train.tiny import build_tiny_llava

    # An untrained model babbles: neither the JSON nor the text parser can read it.
    untrained = build_tiny_llava(tmp_path / "untrained", ["a plain sentence about nothing in particular"] * 20)
    with running_simulator(SimulatorConfig()) as base_url:
        result = benchmark_flow(
            name="untrained", model=str(untrained), base_url=base_url, parser_model="seke-simulator", limit=4, max_new_tokens=16
        )
    with session_scope(fresh) as session:
        methods = session.scalars(select(BenchmarkAnswer.parse_method)).all()
    assert methods == ["llm"] * 4
    assert result.scores.n_unparseable == 0

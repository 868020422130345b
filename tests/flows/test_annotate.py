"""The annotate flow end to end: real Postgres, the simulator over HTTP, the Prefect test API.

Reliability: fault storms complete, malformed output is stored and resampled,
a SIGKILLed run resumes to exactly what a clean run produces, bad images fail
alone, budgets stop gracefully. The README's provenance queries run here too.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from models.labels import Split
from models.orm import Annotation, HumanLabel, Image, Run, RunImage, UAMCStep, VLLMCall
from core.config import Settings
from core.db import session_scope
from simulator.server import SimulatorConfig, running_simulator
from core.store import open_store
from tasks.annotate import AnnotateConfig
from tasks.uamc import UAMCConfig
from tests.helpers import prepared_settings, set_gate, simulator_stats, use, wait_until

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("prefect_api")



def run_flow(base_url: str, run_name: str, concurrency: int = 8, **kwargs):
    from flows.annotate import annotate_flow

    return annotate_flow(run_name=run_name, base_url=base_url, model="seke-simulator", concurrency=concurrency, **kwargs)


def fingerprint(settings: Settings, run_name: str) -> tuple[list, list]:
    """Calls and UAMC steps of a run, keyed by image content: comparable across databases."""
    with session_scope(settings) as session:
        calls = session.execute(
            select(Image.sha256, VLLMCall.stage, VLLMCall.sample_index, VLLMCall.valid, VLLMCall.raw_text, VLLMCall.prompt_sha256)
            .join(Image, Image.id == VLLMCall.image_id)
            .join(Run, Run.id == VLLMCall.run_id)
            .where(Run.name == run_name)
            .order_by(Image.sha256, VLLMCall.stage, VLLMCall.sample_index)
        ).all()
        steps = session.execute(
            select(Image.sha256, UAMCStep.step, UAMCStep.decision, UAMCStep.p, UAMCStep.valid_samples)
            .join(Image, Image.id == UAMCStep.image_id)
            .join(Run, Run.id == UAMCStep.run_id)
            .where(Run.name == run_name)
            .order_by(Image.sha256, UAMCStep.step)
        ).all()
    return [tuple(row) for row in calls], [tuple(row) for row in steps]


def test_clean_run_annotates_every_feid_image_and_keeps_human_labels(fresh: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEKE_VLLM_API_KEY", "sk-never-stored")
    with running_simulator(SimulatorConfig()) as base_url:
        report = run_flow(base_url, "clean", limit=30)
    assert report.status == "completed"
    assert report.images == {"done": 30}
    with session_scope(fresh) as session:
        stored = session.execute(text("SELECT config::text || request_params::text FROM runs, vllm_calls LIMIT 50")).scalars().all()
        assert stored and not any("sk-never-stored" in row for row in stored)
        run_id = session.scalar(select(Run.id).where(Run.name == "clean"))
        assert session.scalar(select(func.count()).select_from(RunImage).join(Image, Image.id == RunImage.image_id).where(Image.split != Split.FEID.value)) == 0
        # Every human label is kept, with human provenance, untouched.
        humans = session.execute(
            select(Annotation, HumanLabel)
            .join(HumanLabel, Annotation.human_label_id == HumanLabel.id)
            .where(Annotation.run_id == run_id)
        ).all()
        assert humans and all(a.value == h.value and a.provenance == "human" for a, h in humans)
        image_ids = session.scalars(select(RunImage.image_id).where(RunImage.run_id == run_id)).all()
        human_count = session.scalar(select(func.count(HumanLabel.id)).where(HumanLabel.image_id.in_(image_ids)))
        assert len(humans) == human_count
        # Every image ends with all 20 fields (expression, valence, arousal, 17 AUs).
        per_image = session.execute(
            select(Annotation.image_id, func.count()).where(Annotation.run_id == run_id).group_by(Annotation.image_id)
        ).all()
        assert {n for _, n in per_image} == {20}
        # Samples used = valid prior-sample calls; UAMC stays within [2, N].
        for image_id, used in session.execute(select(RunImage.image_id, RunImage.samples_used).where(RunImage.run_id == run_id)):
            valid = session.scalar(
                select(func.count()).where(VLLMCall.run_id == run_id, VLLMCall.image_id == image_id, VLLMCall.stage == "prior-sample", VLLMCall.valid)
            )
            assert valid == used
            assert used == 0 or 2 <= used <= 5


def test_fault_storm_completes_with_every_image_done(fresh: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # 8 failures in a row, then 10% of requests fail; 12 attempts with short backoff absorb it. Which
    # requests the storm hits depends on arrival order, but it hits any call at most 8 times, and the
    # failures after it are drawn per request (seed 3: no call meets more than 3 in a row), so the
    # outcome is the same every run.
    monkeypatch.setenv("SEKE_VLLM_MAX_ATTEMPTS", "12")
    monkeypatch.setenv("SEKE_VLLM_BACKOFF_BASE_S", "0.02")
    storm = SimulatorConfig(storm_requests=8, rate_limit_rate=0.05, server_error_rate=0.05, retry_after_s=0.02, seed=3)
    with running_simulator(storm) as base_url:
        report = run_flow(base_url, "storm", limit=12)
    assert report.images == {"done": 12}
    with session_scope(fresh) as session:
        retried = session.scalar(select(func.count()).where(VLLMCall.attempts > 1))
    assert retried > 0  # the storm really hit, and the client's retries absorbed it


def test_malformed_output_is_stored_invalid_and_resampled(fresh: Settings) -> None:
    config = AnnotateConfig(uamc=UAMCConfig(max_invalid=8))
    with running_simulator(SimulatorConfig(malformed_rate=0.25, seed=5)) as base_url:
        report = run_flow(base_url, "malformed", limit=12, config=config)
    assert report.images == {"done": 12}
    assert report.invalid_calls > 0
    with session_scope(fresh) as session:
        invalid = session.scalars(select(VLLMCall).where(VLLMCall.valid.is_(False))).all()
        assert invalid and all(call.error and call.raw_text is not None and call.parsed is None for call in invalid)
        for image_id, used in session.execute(select(RunImage.image_id, RunImage.samples_used)):
            steps = session.scalars(select(UAMCStep.valid_samples).where(UAMCStep.image_id == image_id)).all()
            # Invalid answers never count toward S_n: every step saw only valid samples.
            assert all(n <= used for n in steps)


def test_too_many_invalid_answers_fail_the_image_with_a_reason(fresh: Settings) -> None:
    config = AnnotateConfig(uamc=UAMCConfig(max_invalid=1))
    with running_simulator(SimulatorConfig(malformed_rate=1.0)) as base_url:
        report = run_flow(base_url, "all-bad", limit=3, config=config)
    assert report.status == "failed" and report.images == {"failed": 3}
    with session_scope(fresh) as session:
        reasons = session.scalars(select(RunImage.failure_reason)).all()
    assert all(reason and "invalid answers" in reason for reason in reasons)


def test_bad_image_in_the_queue_fails_alone(fresh: Settings) -> None:
    store = open_store(fresh)
    with session_scope(fresh) as session:
        victim = session.scalars(select(Image).where(Image.split == Split.FEID.value).order_by(Image.id).limit(1)).one()
    store.put_bytes(victim.object_key, b"\x89PNG\r\n\x1a\n broken")
    with running_simulator(SimulatorConfig()) as base_url:
        report = run_flow(base_url, "bad-image", limit=6)
    assert report.images == {"done": 5, "failed": 1}
    with session_scope(fresh) as session:
        row = session.get(RunImage, (session.scalar(select(Run.id).where(Run.name == "bad-image")), victim.id))
    assert row.status == "failed" and "cannot read image" in row.failure_reason


def test_budget_stops_gracefully_and_resume_finishes(fresh: Settings) -> None:
    with running_simulator(SimulatorConfig()) as base_url:
        stopped = run_flow(base_url, "budget", limit=20, max_calls=10)
        assert stopped.status == "stopped" and "call budget" in stopped.stop_reason
        assert 0 < stopped.images.get("done", 0) < 20
        done_before = stopped.images["done"]
        finished = run_flow(base_url, "budget", limit=20)
    assert finished.status == "completed" and finished.images == {"done": 20}
    assert finished.images["done"] > done_before


def test_sigkilled_run_resumes_to_exactly_the_clean_run(
    postgres_admin_url: str, demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL

    clean = prepared_settings(postgres_admin_url, tmp_path / "clean", demo)
    killed = prepared_settings(postgres_admin_url, tmp_path / "killed", demo)
    # 25 answers, then every coroutine waits at the simulator's gate: the run stands still mid-way when killed.
    simulator = SimulatorConfig(hold_after=25)
    with running_simulator(simulator) as base_url:
        env = {
            **os.environ,
            "SEKE_DATABASE_URL": killed.database_url.get_secret_value(),
            "SEKE_STORE_URL": killed.store_url,
            "SEKE_STATE_DIR": str(killed.state_dir),
            "SEKE_VLLM_BASE_URL": base_url,
            "SEKE_VLLM_MODEL": simulator.model_name,
            "PREFECT_API_URL": PREFECT_API_URL.value(),
        }
        command = [sys.executable, "-m", "seke", "annotate", "--run", "resume", "--limit", "16", "--concurrency", "4"]
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(lambda: simulator_stats(base_url)["held"] == 4, "every coroutine waiting at the gate", [process])
        process.send_signal(signal.SIGKILL)
        process.wait()
        set_gate(base_url, None)

        with session_scope(killed) as session:
            assert session.scalar(select(func.count()).where(RunImage.status != "done")) > 0  # really mid-way
        use(killed, monkeypatch)
        shared = AnnotateConfig(shared_prefill=True)  # as the CLI asks by default: first samples as n choices
        resumed = run_flow(base_url, "resume", limit=16, concurrency=4, config=shared)
        use(clean, monkeypatch)
        reference = run_flow(base_url, "resume", limit=16, concurrency=4, config=shared)
    assert resumed.images == reference.images == {"done": 16}
    killed_calls, killed_steps = fingerprint(killed, "resume")
    clean_calls, clean_steps = fingerprint(clean, "resume")
    assert killed_calls == clean_calls  # same calls, same answers, none lost or duplicated
    assert killed_steps == clean_steps  # same seeded UAMC decisions


def provenance_queries() -> list[str]:
    """The SQL blocks of the README's provenance section: the docs are what the tests run."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Provenance in SQL", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


def test_readme_provenance_queries_return_rows(fresh: Settings) -> None:
    queries = provenance_queries()
    assert len(queries) >= 3
    with running_simulator(SimulatorConfig()) as base_url:
        run_flow(base_url, "provenance", limit=40, config=AnnotateConfig(uamc=UAMCConfig(normaliser="attainable")))
    engine = create_engine(fresh.database_url.get_secret_value())
    with engine.connect() as connection:
        for query in queries:
            rows = connection.execute(text(query)).all()
            assert rows, f"README query returned no rows:\n{query}"
    engine.dispose()


def test_prefect_global_limit_caps_images_in_flight(fresh: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    async def create_limit() -> None:
        async with get_client() as client:
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="one-image", limit=1))

    asyncio.run(create_limit())
    monkeypatch.setenv("SEKE_PREFECT_CONCURRENCY_LIMIT", "one-image")
    with running_simulator(SimulatorConfig(latency_ms=20)) as base_url:
        report = run_flow(base_url, "capped", limit=5, concurrency=4)
    assert report.images == {"done": 5}
    with session_scope(fresh) as session:
        windows = session.execute(
            select(VLLMCall.image_id, func.min(VLLMCall.started_at), func.max(VLLMCall.finished_at)).group_by(VLLMCall.image_id)
        ).all()
    spans = sorted((start, end) for _, start, end in windows)
    # With one slot, no image's calls overlap another's, although four threads were free.
    assert all(previous[1] <= current[0] for previous, current in zip(spans, spans[1:]))


def test_several_images_per_task_run(fresh: Settings) -> None:
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
    from prefect.client.schemas.sorting import TaskRunSort

    with running_simulator(SimulatorConfig()) as base_url:
        report = run_flow(base_url, "batched", limit=8, images_per_task=4)
    assert report.images == {"done": 8}
    with session_scope(fresh) as session:
        ids = session.scalars(select(RunImage.image_id).order_by(RunImage.image_id)).all()

    async def names() -> set[str]:
        async with get_client() as client:
            wanted = [f"images-{ids[0]}-to-{ids[3]}", f"images-{ids[4]}-to-{ids[7]}"]
            runs = await client.read_task_runs(
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=wanted)), sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=10
            )
            return {run.name for run in runs}

    assert asyncio.run(names()) == {f"images-{ids[0]}-to-{ids[3]}", f"images-{ids[4]}-to-{ids[7]}"}


def test_shards_hand_over_without_draining(fresh: Settings) -> None:
    """4 images a shard, 6 at a time: no shard takes more than its 4 although 6 coroutines claim at
    once, and the next shard starts while the one before is still annotating its images."""
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterName

    import threading

    # No answer until 6 calls wait at the gate: shard 0's 4 images and 2 of shard 1's, which has therefore
    # started while shard 0 is still annotating.
    with running_simulator(SimulatorConfig(hold_after=0)) as base_url:
        def open_once_both_shards_wait() -> None:
            wait_until(lambda: simulator_stats(base_url)["held"] == 6, "6 calls held")
            set_gate(base_url, None)

        opener = threading.Thread(target=open_once_both_shards_wait)
        opener.start()
        report = run_flow(base_url, "handover", limit=8, shard_size=4, concurrency=6)
        opener.join()
    assert report.images == {"done": 8}

    async def shards() -> list[tuple]:
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_="handover-shard-")))
            return [
                (run, len(await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))))
                for run in sorted(runs, key=lambda run: int(run.name.rsplit("-", 1)[1]))  # handover-shard-<worker>-<n>
            ]

    runs = asyncio.run(shards())
    assert [images for _, images in runs][:2] == [4, 4] and sum(images for _, images in runs) == 8
    assert all(run.state.is_completed() for run, _ in runs)
    assert runs[1][0].start_time < runs[0][0].end_time

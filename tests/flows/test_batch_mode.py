"""Batch mode end to end: real Postgres, the simulator's Batch API over HTTP, the Prefect test API.

The same images and seed online and in batch rounds give the same stored
answers, UAMC steps and final labels; a crash between creating a batch and
recording its id submits nothing twice; an expired batch is retried; a round
larger than one batch is split.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.request import urlopen

import openai
import pytest
from sqlalchemy import func, select

from core.config import Settings
from core.db import session_scope
from models.orm import Annotation, ApiBatch, Image, Run, UAMCStep, VLLMCall
from simulator.server import SimulatorConfig, running_simulator
from tasks.annotate import AnnotateConfig
from tests.helpers import prepared_settings, use

pytestmark = pytest.mark.usefixtures("prefect_api")
RUN = "same-name"  # UAMC's stream is seeded by run name: the online and batch runs share it, in two databases
LIMIT = 12


def _settings(admin_url: str, root: Path, demo: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    settings = prepared_settings(admin_url, root, demo)
    use(settings, monkeypatch)
    return settings


def _batch(base_url: str, **kwargs):
    from flows.batch import annotate_batch_flow

    return annotate_batch_flow(run_name=RUN, config=AnnotateConfig(seed=7), limit=LIMIT, base_url=base_url,
                               model="seke-simulator", poll_s=0.05, **kwargs)


def _online(base_url: str):
    from flows.annotate import annotate_flow

    return annotate_flow(run_name=RUN, config=AnnotateConfig(seed=7), limit=LIMIT, base_url=base_url, model="seke-simulator")


def results(settings: Settings) -> dict[str, list]:
    """Parsed answers, UAMC steps and final labels of the run, keyed by image content."""
    with session_scope(settings) as session:
        run_id = session.scalar(select(Run.id).where(Run.name == RUN))
        calls = session.execute(
            select(Image.sha256, VLLMCall.stage, VLLMCall.sample_index, VLLMCall.valid, VLLMCall.parsed, VLLMCall.prompt_sha256,
                   VLLMCall.tokens_in, VLLMCall.tokens_out)
            .join(Image, Image.id == VLLMCall.image_id).where(VLLMCall.run_id == run_id)
            .order_by(Image.sha256, VLLMCall.stage, VLLMCall.sample_index)
        ).all()
        steps = session.execute(
            select(Image.sha256, UAMCStep.step, UAMCStep.decision, UAMCStep.p, UAMCStep.u_max)
            .join(Image, Image.id == UAMCStep.image_id).where(UAMCStep.run_id == run_id)
            .order_by(Image.sha256, UAMCStep.step)
        ).all()
        labels = session.execute(
            select(Image.sha256, Annotation.field, Annotation.provenance, Annotation.value_text, Annotation.value_number,
                   Annotation.value_bool)
            .join(Image, Image.id == Annotation.image_id).where(Annotation.run_id == run_id)
            .order_by(Image.sha256, Annotation.field)
        ).all()
    return {"calls": [tuple(r) for r in calls], "steps": [tuple(r) for r in steps], "labels": [tuple(r) for r in labels]}


def cost(settings: Settings) -> float:
    with session_scope(settings) as session:
        return float(session.scalar(select(func.sum(VLLMCall.cost_usd))))


def test_batch_mode_matches_online_mode_at_half_the_price(
    postgres_admin_url: str, demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    online = _settings(postgres_admin_url, tmp_path / "online", demo, monkeypatch)
    with running_simulator(SimulatorConfig()) as base_url:
        assert _online(base_url).images == {"done": LIMIT}
    online_results, online_cost = results(online), cost(online)

    batch = _settings(postgres_admin_url, tmp_path / "batch", demo, monkeypatch)
    with running_simulator(SimulatorConfig()) as base_url:
        report = _batch(base_url)
    assert report.images == {"done": LIMIT}
    assert results(batch) == online_results
    assert cost(batch) == pytest.approx(online_cost * 0.5, rel=1e-3)
    with session_scope(batch) as session:
        assert session.scalar(select(func.count()).select_from(VLLMCall).where(VLLMCall.batch_id.is_(None))) == 0
        rounds = session.scalar(select(func.max(ApiBatch.round)))
        assert {s for (s,) in session.execute(select(ApiBatch.status))} == {"imported"}
    config = AnnotateConfig().uamc
    assert rounds <= config.max_samples - config.start_samples + 3
    from tasks.batch import batch_savings

    with session_scope(batch) as session:
        savings = batch_savings(session, report.run_id)
    assert savings.calls == len(online_results["calls"])
    assert savings.online_cost_usd == pytest.approx(online_cost, rel=1e-3)
    assert savings.saved_usd == pytest.approx(online_cost * 0.5, rel=1e-3)


def test_a_batch_api_refusing_n_gets_one_line_per_sample_with_the_same_answers_as_online(
    postgres_admin_url: str, demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.batch import annotate_batch_flow

    online = _settings(postgres_admin_url, tmp_path / "online", demo, monkeypatch)
    with running_simulator(SimulatorConfig()) as base_url:
        assert _online(base_url).images == {"done": LIMIT}
    online_results = results(online)

    batch = _settings(postgres_admin_url, tmp_path / "batch", demo, monkeypatch)
    with running_simulator(SimulatorConfig(refuse_n=True)) as base_url:
        report = annotate_batch_flow(run_name=RUN, config=AnnotateConfig(seed=7, shared_prefill=True), limit=LIMIT,
                                     base_url=base_url, model="seke-simulator", poll_s=0.05)  # fmt: skip
    assert report.images == {"done": LIMIT} and report.shared_prefill_refused
    # Round 1's n=2 lines were refused; from round 2 each sample is its own line, seeded as online.
    assert results(batch) == online_results
    with session_scope(batch) as session:
        params = session.scalars(select(VLLMCall.request_params)).all()
    assert not [p for p in params if "n" in p] and sum("shared_prefill_refused" in p for p in params) == 1


def test_crash_after_submission_submits_no_batch_twice_and_a_large_round_is_split(
    postgres_admin_url: str, demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(postgres_admin_url, tmp_path, demo, monkeypatch)
    with running_simulator(SimulatorConfig()) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="x")
        # A first invocation that dies after creating its batch and before recording the batch id:
        # the input file is uploaded and its row written, the batch created, nothing more.
        created: list[str] = []

        class Crash(Exception):
            pass

        from tasks import batch as batch_module

        original = batch_module.BatchRunner.create

        def create_then_die(self, row_id, input_file_id, round_no, part):
            created.append(self.client.batches.create(input_file_id=input_file_id, endpoint=batch_module.ENDPOINT,
                                                      completion_window="24h").id)
            raise Crash

        monkeypatch.setattr(batch_module.BatchRunner, "create", create_then_die)
        with pytest.raises(Crash):
            _batch(base_url, return_state=False)
        monkeypatch.setattr(batch_module.BatchRunner, "create", original)
        with session_scope(settings) as session:
            (row,) = session.scalars(select(ApiBatch)).all()
            assert row.batch_id is None and row.status == "uploaded"

        report = _batch(base_url, max_requests_per_batch=5, plan_chunk=5)  # small parts, images replayed 5 at a time
        assert report.images == {"done": LIMIT}
        batches = [b for b in client.batches.list()]
        stats = json.loads(urlopen(base_url.removesuffix("/v1") + "/simulator/stats").read())
    inputs = [b.input_file_id for b in batches]
    assert len(inputs) == len(set(inputs)), "an input file was submitted twice"
    with session_scope(settings) as session:
        rows = session.scalars(select(ApiBatch).order_by(ApiBatch.round, ApiBatch.part)).all()
        calls = session.scalar(select(func.count()).select_from(VLLMCall))
    assert rows[0].batch_id == created[0]  # the interrupted batch was adopted, not created again
    assert len(rows) == len(batches)
    assert any(row.part > 1 for row in rows) and all(row.request_count <= 5 for row in rows[1:])
    assert stats["requests"] == calls  # every answered line stored once, none paid twice


def test_an_expired_batch_is_retried_in_the_next_round(
    postgres_admin_url: str, demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(postgres_admin_url, tmp_path, demo, monkeypatch)
    # Failed lines are drawn per line and per time it is sent (not by arrival order): the same every run.
    with running_simulator(SimulatorConfig(batch_expire_first=1, batch_failed_line_rate=0.1, batch_completion_s=0.1)) as base_url:
        report = _batch(base_url)
    assert report.images == {"done": LIMIT}
    with session_scope(settings) as session:
        first = session.scalars(select(ApiBatch).order_by(ApiBatch.id)).first()
        assert first.status == "imported" and first.completed_count == 0
        assert session.scalar(select(func.count()).select_from(VLLMCall).where(VLLMCall.batch_id == first.batch_id)) == 0


def test_fallback_online_asks_an_expired_batch_online_in_the_same_round(
    postgres_admin_url: str, demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(postgres_admin_url, tmp_path, demo, monkeypatch)
    with running_simulator(SimulatorConfig(batch_expire_first=1)) as base_url:
        report = _batch(base_url, fallback_online=True)
    assert report.images == {"done": LIMIT}
    with session_scope(settings) as session:
        online = session.scalars(select(VLLMCall.stage).where(VLLMCall.batch_id.is_(None))).all()
        rounds = session.scalar(select(func.max(ApiBatch.round)))
    assert online and set(online) == {"prior-sample"}  # round 1 expired: its first samples were asked online
    assert rounds <= 6  # no round was added for the expired one


def test_cli_annotate_batch_prints_each_round(postgres_admin_url: str, demo: Path, tmp_path: Path, prefect_api: None) -> None:
    from prefect.settings import PREFECT_API_URL

    settings = prepared_settings(postgres_admin_url, tmp_path, demo)
    with running_simulator(SimulatorConfig()) as base_url:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "SEKE_"))}
        env.update(
            PREFECT_API_URL=PREFECT_API_URL.value(),  # the session's server: each command would start its own
            HOME=str(tmp_path), SEKE_STATE_DIR=str(tmp_path / "state"), SEKE_DATABASE_URL=settings.database_url.get_secret_value(),
            SEKE_STORE_URL=settings.store_url, SEKE_VLLM_BASE_URL=base_url, SEKE_VLLM_MODEL="seke-simulator", COLUMNS="160",
        )
        done = subprocess.run([str(Path(sys.executable).parent / "seke"), "annotate", "--run", "cli-batch", "--limit", "3",
                               "--batch", "--batch-poll-s", "0"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    # Shared prefill (the CLI's default): each image's two first samples are one line asking n=2 choices.
    assert "round 1: 3 requests for 3 images in 1 batch(es)" in done.stdout
    files = subprocess.run([str(Path(sys.executable).parent / "seke"), "batch", "export-round", "cli-files", "--limit", "2",
                            "--out", str(tmp_path / "in.jsonl")], env=env, capture_output=True, text=True, timeout=300)
    assert files.returncode == 0, files.stdout[-2000:] + files.stderr[-3000:]
    assert "4 requests written to" in files.stdout and len((tmp_path / "in.jsonl").read_text().splitlines()) == 4
    # File rounds with shared prefill: one line per image asking n=2 choices.
    shared = subprocess.run([str(Path(sys.executable).parent / "seke"), "batch", "export-round", "cli-files-n", "--limit", "2",
                             "--shared-prefill", "--out", str(tmp_path / "in-n.jsonl")], env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert shared.returncode == 0, shared.stdout[-2000:] + shared.stderr[-3000:]
    bodies = [json.loads(line)["body"] for line in (tmp_path / "in-n.jsonl").read_text().splitlines()]
    assert [body.get("n") for body in bodies] == [2, 2]
    # A round made the other way is refused before anything is read, with the setting named.
    mixed = subprocess.run([str(Path(sys.executable).parent / "seke"), "batch", "import-round", "cli-files-n",
                            str(tmp_path / "in-n.jsonl")], env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert mixed.returncode == 2 and "shared_prefill: True → False" in " ".join(mixed.stdout.split() + mixed.stderr.split())
    assert "Traceback" not in mixed.stdout + mixed.stderr
    plan = subprocess.run([str(Path(sys.executable).parent / "seke"), "annotate", "--run", "planned", "--limit", "3", "--plan"],
                          # --plan formats the endpoint's caps, which a self-hosted endpoint leaves unset: give it some
                          env={**env, "SEKE_REQUESTS_PER_MINUTE": "3000", "SEKE_TOKENS_PER_MINUTE": "2000000"},
                          capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stdout[-2000:] + plan.stderr[-3000:]
    assert "cost with --batch" in plan.stdout and "up to 6 rounds" in plan.stdout
    assert "all rounds done" in done.stdout and "run cli-batch: completed" in done.stdout
    assert "Warning" not in done.stdout + done.stderr, done.stderr[-3000:]
    show = subprocess.run([str(Path(sys.executable).parent / "seke"), "runs", "show", "cli-batch"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert show.returncode == 0 and "batch mode: " in show.stdout and "saved $" in show.stdout, show.stdout + show.stderr


def test_a_run_stopped_while_waiting_resumes_its_batch_and_a_cancelled_batch_goes_to_the_next_round(
    postgres_admin_url: str, demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks import batch as batch_module

    settings = _settings(postgres_admin_url, tmp_path, demo, monkeypatch)

    class Stopped(Exception):
        pass

    original = batch_module.BatchRunner.wait

    def stop_while_waiting(self, rows):
        # The process stops while its batch is in progress, and the batch is cancelled at the provider meanwhile.
        self.client.batches.cancel(rows[0].batch_id)
        raise Stopped

    with running_simulator(SimulatorConfig(batch_completion_s=0.5)) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="x")
        monkeypatch.setattr(batch_module.BatchRunner, "wait", stop_while_waiting)
        with pytest.raises(Stopped):
            _batch(base_url)
        with session_scope(settings) as session:
            (row,) = session.scalars(select(ApiBatch)).all()
        assert row.batch_id and row.status == "in_progress"
        monkeypatch.setattr(batch_module.BatchRunner, "wait", original)
        report = _batch(base_url)
        inputs = [b.input_file_id for b in client.batches.list()]
    assert report.images == {"done": LIMIT}
    assert len(inputs) == len(set(inputs))
    with session_scope(settings) as session:
        first = session.get(ApiBatch, row.id)
        assert first.status == "imported" and first.completed_count == 0
        assert session.scalar(select(func.count()).select_from(VLLMCall).where(VLLMCall.batch_id == row.batch_id)) == 0


def test_rounds_as_files_for_vllm_run_batch_match_online_mode_and_import_is_idempotent(
    postgres_admin_url: str, demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    from flows.batch import offline_runner

    online = _settings(postgres_admin_url, tmp_path / "online", demo, monkeypatch)
    with running_simulator(SimulatorConfig()) as base_url:
        assert _online(base_url).images == {"done": LIMIT}
    expected = results(online)

    settings = _settings(postgres_admin_url, tmp_path / "files", demo, monkeypatch)

    def runner():
        return offline_runner(RUN, AnnotateConfig(seed=7), LIMIT, "seke-simulator", 1.0)

    with running_simulator(SimulatorConfig()) as base_url:
        for round_no in range(1, 10):
            requests = runner().export_round()
            if not requests:
                break
            # What `vllm run-batch -i in.jsonl -o out.jsonl` does: every line answered, in the same format.
            output = tmp_path / f"out-{round_no}.jsonl"
            with output.open("w") as file:
                for raw in requests:
                    line = json.loads(raw)
                    answer = httpx.post(f"{base_url}/chat/completions", json=line["body"], timeout=30).json()
                    file.write(json.dumps({"id": f"vllm-{round_no}", "custom_id": line["custom_id"],
                                           "response": {"status_code": 200, "request_id": "r", "body": answer},
                                           "error": None}) + "\n")
            assert runner().import_round(output.read_text(), output.name).stored == len(requests)
            assert runner().import_round(output.read_text(), output.name).stored == 0  # idempotent
    assert round_no <= 7
    assert results(settings) == expected
    with session_scope(settings) as session:
        assert session.scalar(select(Run.status).where(Run.name == RUN)) == "completed"
        assert session.scalar(select(func.count()).select_from(VLLMCall).where(~VLLMCall.batch_id.like("file:out-%"))) == 0

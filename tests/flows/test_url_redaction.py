"""A key in the endpoint URL is never stored, logged, published or shown (core/redact.py)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from core.config import Settings
from core.db import session_scope
from core.redact import redact_text, redact_url
from models.orm import Run, RunImage, VLLMCall
from simulator.server import SimulatorConfig, running_simulator

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pw@gw.example/v1", "https://***@gw.example/v1"),
        ("https://gw.example/v1?api-key=abc&api-version=2024-06-01", "https://gw.example/v1?api-key=***&api-version=2024-06-01"),
        ("https://gw.example/v1?sig=abc&X-Amz-Credential=x", "https://gw.example/v1?sig=***&X-Amz-Credential=***"),
        ("https://gw.example/v1?abc123", "https://gw.example/v1?***"),
        ("https://gw.example/v1", "https://gw.example/v1"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_text_finds_urls_in_messages() -> None:
    text = "http://k:SECRET@h:1/v1?token=SECRET2 (model 'x') refused the request"
    assert "SECRET" not in redact_text(text) and "(model 'x') refused" in redact_text(text)



def _prefect_texts() -> str:
    """Every log, artifact, flow run (parameters, state messages) and event in the Prefect API, as one string."""
    from prefect.client.orchestration import get_client

    texts = []
    with get_client(sync_client=True) as client:
        for route in ("/logs/filter", "/artifacts/filter", "/flow_runs/filter", "/task_runs/filter"):
            offset = 0
            while batch := client._client.post(route, json={"limit": 200, "offset": offset}).json():
                texts.append(json.dumps(batch))
                offset += len(batch)
        page = client._client.post("/events/filter", json={"limit": 50}).json()
        while page:
            texts.append(json.dumps(page["events"]))
            page = client._client.get(page["next_page"]).json() if page.get("next_page") else None
    return "\n".join(texts)


def _database_texts(settings: Settings, run_name: str) -> str:
    with session_scope(settings) as session:
        run = session.scalars(select(Run).where(Run.name == run_name)).one()
        reasons = session.scalars(select(RunImage.failure_reason).where(RunImage.run_id == run.id)).all()
        calls = session.execute(select(VLLMCall.request_params, VLLMCall.error).where(VLLMCall.run_id == run.id)).all()
        return json.dumps([run.config, run.stop_reason, reasons, [list(c) for c in calls]], default=str)


def test_keys_in_the_endpoint_url_stay_out_of_the_database_and_prefect(
    fresh: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.annotate import annotate_flow

    with running_simulator(SimulatorConfig()) as base_url:
        # userinfo: the calls go through, the key must not be recorded with them.
        monkeypatch.setenv("SEKE_VLLM_MODEL", "seke-simulator")
        monkeypatch.setenv("SEKE_VLLM_BASE_URL", base_url.replace("http://", "http://seke:USERINFOSECRET@"))
        done = annotate_flow(run_name="userinfo-key", limit=2)
        # ?api-key=: the endpoint answers 404, so the URL lands in the failure reason and the stop reason.
        monkeypatch.setenv("SEKE_VLLM_BASE_URL", base_url + "?api-key=QUERYSECRET")
        stopped = annotate_flow(run_name="query-key", limit=2)
    assert done.status == "completed"
    assert stopped.failures
    stored = _database_texts(fresh, "userinfo-key") + _database_texts(fresh, "query-key")
    assert "***@" in stored and "api-key=***" in stored
    published = _prefect_texts()
    for secret in ("USERINFOSECRET", "QUERYSECRET"):
        assert secret not in stored
        assert secret not in published

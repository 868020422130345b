"""SIGKILL with a write buffer: a resume pays again at most the calls in flight plus the buffer's rows.

The simulator here counts every chat request it receives, so the calls the
killed process paid for are known exactly; the database says which of them
were committed. The difference, the calls a resume must pay again, is bounded
by the concurrency (one call in flight per image) plus SEKE_WRITE_BUFFER_ROWS.
The time bound is set far out so that only the row bound holds rows back.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import create_engine, func, select, text

from core.db import session_scope
from models.orm import RunImage, VLLMCall
from simulator.server import SimulatorConfig, create_app
from tests.helpers import prepared_settings, set_gate, simulator_stats, use, wait_until

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("prefect_api")
CONCURRENCY, BUFFER_ROWS = 4, 6


class CountingApp:
    """The simulator's ASGI app, counting the chat requests that reach it (each one is a paid call)."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.app = create_app(config)
        self.chats = 0

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
            self.chats += 1
        await self.app(scope, receive, send)


@contextmanager
def serving(app: CountingApp) -> Iterator[str]:
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_resume_after_sigkill_pays_again_at_most_in_flight_plus_buffer_rows(
    postgres_admin_url: str, demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL

    from flows.annotate import annotate_flow

    settings = prepared_settings(postgres_admin_url, tmp_path, demo)
    # 25 answers, then every coroutine waits at the simulator's gate: the run stands still mid-way when killed.
    app = CountingApp(SimulatorConfig(hold_after=25))
    with serving(app) as base_url:
        env = {
            **os.environ,
            "SEKE_DATABASE_URL": settings.database_url.get_secret_value(),
            "SEKE_STORE_URL": settings.store_url,
            "SEKE_STATE_DIR": str(settings.state_dir),
            "SEKE_VLLM_BASE_URL": base_url,
            "SEKE_VLLM_MODEL": "seke-simulator",
            "SEKE_WRITE_BUFFER_ROWS": str(BUFFER_ROWS),
            "SEKE_WRITE_BUFFER_MS": "600000",
            "PREFECT_API_URL": PREFECT_API_URL.value(),
        }
        # One request per call row (no n-choice requests): paid requests are compared with stored rows below.
        command = [sys.executable, "-m", "seke", "annotate", "--no-shared-prefill", "--run", "kill", "--limit", "16",
                   "--concurrency", str(CONCURRENCY)]  # fmt: skip
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        # Every call in flight has reached the server (and is counted) once all the coroutines wait there.
        wait_until(lambda: simulator_stats(base_url)["held"] == CONCURRENCY, "every coroutine waiting at the gate", [process])
        process.send_signal(signal.SIGKILL)
        process.wait()
        paid_by_killed = app.chats
        set_gate(base_url, None)
        engine = create_engine(settings.database_url.get_secret_value())
        with engine.connect() as connection:
            committed = connection.scalar(text("SELECT count(*) FROM vllm_calls"))
        engine.dispose()

        with session_scope(settings) as session:
            assert session.scalar(select(func.count()).where(RunImage.status != "done")) > 0  # really mid-way
        use(settings, monkeypatch)
        resumed = annotate_flow(run_name="kill", base_url=base_url, model="seke-simulator", limit=16, concurrency=CONCURRENCY)
    assert resumed.images == {"done": 16}
    paid_again = paid_by_killed - committed
    assert 0 <= paid_again <= CONCURRENCY + BUFFER_ROWS
    with session_scope(settings) as session:
        total = session.scalar(select(func.count(VLLMCall.id)))
    # Every paid call is stored once, except those the kill lost and the resume paid again.
    assert app.chats == total + paid_again

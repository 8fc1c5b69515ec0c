"""The extension's migrations: its tables on an empty database, its own version table."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from intranet_licenses import schema
from intranet_licenses.models import metadata

TABLES = {
    "licenses_profile",
    "licenses_seat_counter",
    "licenses_installed",
    "licenses_audit",
    "licenses_setting",
}


def _upgrade_and_check(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("create table alembic_version (version_num varchar(32))"))
            conn.execute(sa.text("insert into alembic_version values ('host-rev-7')"))
        schema.upgrade(engine)
        names = set(sa.inspect(engine).get_table_names())
        assert TABLES <= names
        assert schema.current_revision(engine) == schema.head_revision()
        with engine.connect() as conn:
            # The host's own version table is untouched.
            assert conn.execute(sa.text("select version_num from alembic_version")).all() == [
                ("host-rev-7",)
            ]
            pools = conn.execute(sa.text("select pool, used from licenses_seat_counter")).all()
            assert sorted(pools) == [("extranet", 0), ("intranet", 0), ("readonly", 0)]
            # The models and the migrations describe the same schema.
            context = MigrationContext.configure(
                conn,
                opts={
                    "version_table": schema.VERSION_TABLE,
                    "include_name": lambda name, type_, parent: (
                        type_ != "table"
                        or (name.startswith("licenses_") and name != schema.VERSION_TABLE)
                    ),
                },
            )
            assert compare_metadata(context, metadata) == []
        schema.upgrade(engine)  # running it again is harmless
        assert schema.current_revision(engine) == schema.head_revision()
    finally:
        engine.dispose()


def test_the_migrations_create_the_schema_on_an_empty_sqlite_database(tmp_path):
    _upgrade_and_check(f"sqlite:///{tmp_path / 'empty.db'}")


@pytest.mark.postgres
def test_the_migrations_create_the_schema_on_postgresql(postgres_url):
    _upgrade_and_check(postgres_url)

"""The extension's migrations: its tables on an empty database, its own version table."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from intranet_licenses import schema
from intranet_licenses.models import metadata

WAITING_TRIGGERS = (
    "licenses_waiting_insert",
    "licenses_waiting_delete",
    "licenses_waiting_update",
)

TABLES = {
    "licenses_profile",
    "licenses_seat_counter",
    "licenses_installed",
    "licenses_audit",
    "licenses_setting",
    "licenses_waiting_count",
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
            # The waiting-count triggers (0006) are there: a later migration that rebuilds
            # licenses_profile (SQLite's batch mode) would drop them without a word.
            if conn.dialect.name == "sqlite":
                found = "select name from sqlite_master where type = 'trigger'"
            else:
                found = "select tgname from pg_trigger where not tgisinternal"
            assert set(WAITING_TRIGGERS) <= set(conn.execute(sa.text(found)).scalars())
        schema.upgrade(engine)  # running it again is harmless
        assert schema.current_revision(engine) == schema.head_revision()
    finally:
        engine.dispose()


def test_the_migrations_create_the_schema_on_an_empty_sqlite_database(tmp_path):
    _upgrade_and_check(f"sqlite:///{tmp_path / 'empty.db'}")


@pytest.mark.postgres
def test_the_migrations_create_the_schema_on_postgresql(postgres_url):
    _upgrade_and_check(postgres_url)


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_the_keys_of_existing_profiles_are_brought_to_normal_form_c(database, request, tmp_path):
    if database == "postgresql":
        url = request.getfixturevalue("postgres_url").replace(
            "postgresql://", "postgresql+psycopg://", 1
        )
    else:
        url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    people = [  # user_id, username_key, first_name_key
        (1, "e\u0301lise", "ame\u0301lie"),  # decomposed: becomes NFC
        (2, "jose\u0301", "jose\u0301"),  # its NFC form is taken by 3: the username key stays
        (3, "jos\u00e9", "jos\u00e9"),
        (4, "plain", "plain"),
    ]
    try:
        schema.upgrade(engine, "0004_perf")
        with engine.begin() as conn:
            for user_id, username_key, first_name_key in people:
                conn.execute(
                    sa.text(
                        "insert into licenses_profile (user_id, area, readonly, pool, exempt, "
                        "source, created_at, username_key, first_name_key, surname_key, "
                        "email_key) values (:id, 'primary', false, 'intranet', false, 'host', "
                        "'2026-01-01 00:00:00', :u, :f, 's', '')"
                    ),
                    {"id": user_id, "u": username_key, "f": first_name_key},
                )
        schema.upgrade(engine)
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "select user_id, username_key, first_name_key from licenses_profile "
                    "order by user_id"
                )
            ).all()
        assert [tuple(row) for row in rows] == [
            (1, "\u00e9lise", "am\u00e9lie"),
            (2, "jose\u0301", "jos\u00e9"),
            (3, "jos\u00e9", "jos\u00e9"),
            (4, "plain", "plain"),
        ]
    finally:
        engine.dispose()

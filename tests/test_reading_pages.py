"""The License, summary and People pages end a transaction that wrote nothing with COMMIT on
PostgreSQL, so that psycopg keeps their statements prepared (issue 11); a transaction that
wrote anything is still rolled back by the teardown."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from conftest import PASSWORD

import wsgi

PAGES = ("/admin/licenses/", "/admin/licenses/summary", "/admin/licenses/people?q=adm")


def signed_in(app):
    client = app.test_client()
    client.post("/login", data={"username": "admin", "password": PASSWORD})
    return client


def prepared_statements(app) -> list[str]:
    """The statements prepared on the pool's connection (the test client's requests come
    one after another, so they all ran on that one connection)."""
    with app.app_context():
        rows = wsgi.db.session.execute(sa.text("SELECT statement FROM pg_prepared_statements"))
        return [row.statement for row in rows]


def first_name(app, username: str) -> str:
    with app.app_context():
        return wsgi.db.session.scalar(
            sa.select(wsgi.User.first_name).where(wsgi.User.username == username)
        )


@pytest.mark.parametrize("path", PAGES)
def test_a_reading_page_keeps_its_statements_prepared_on_postgresql(postgres_app, path):
    client = signed_in(postgres_app)
    for _ in range(7):  # psycopg prepares a statement at its fifth execution
        response = client.get(path)
        assert response.status_code == 200
    statements = prepared_statements(postgres_app)
    # The figures statement, which every one of these pages reads.
    assert any("AS license_text" in statement for statement in statements), statements


@pytest.mark.parametrize("flush", [True, False], ids=["flushed", "not flushed"])
def test_a_hosts_change_earlier_in_the_request_is_still_rolled_back(postgres_app, flush):
    """A host's before_request hook that changes data and does not commit: the page does not
    commit the change for it, whether the change was flushed (only the server knows) or not."""

    renaming = []

    @postgres_app.before_request
    def rename_admin():
        if renaming:
            admin = wsgi.db.session.scalar(sa.select(wsgi.User).filter_by(username="admin"))
            admin.first_name = "Renamed"
            if flush:
                wsgi.db.session.flush()

    client = signed_in(postgres_app)  # the login commits: the hook waits for it
    renaming.append(True)
    for path in PAGES:
        assert client.get(path).status_code == 200
        assert first_name(postgres_app, "admin") != "Renamed"


def test_a_page_that_fails_commits_nothing(postgres_app, monkeypatch):
    """A view that raises after the host wrote leaves the write to the teardown's rollback."""
    from intranet_licenses import seats

    postgres_app.config["PROPAGATE_EXCEPTIONS"] = False

    renaming = []

    @postgres_app.before_request
    def rename_admin():
        if renaming:
            rename = sa.update(wsgi.User).filter_by(username="admin").values(first_name="Renamed")
            wsgi.db.session.execute(rename)

    client = signed_in(postgres_app)
    renaming.append(True)

    def broken(*_args, **_kwargs):
        raise RuntimeError("the figures could not be read")

    monkeypatch.setattr(seats, "license_and_figures", broken)
    assert client.get("/admin/licenses/summary").status_code == 500
    assert first_name(postgres_app, "admin") != "Renamed"

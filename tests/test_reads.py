"""A page that only read ends its transaction by COMMIT (PostgreSQL keeps its prepared
statements), and never commits what a host changed before it (intranet_licenses.reads)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import wsgi
from tests.conftest import administrator_client

PAGES = ["/admin/licenses/", "/admin/licenses/people", "/admin/licenses/people?q=ad"]


def _prepared(app) -> list[str]:
    """The statements prepared on the connection the test client's requests used."""
    with app.app_context():
        with wsgi.db.engine.connect() as conn:
            statement = sa.text("select statement from pg_prepared_statements")
            return list(conn.execute(statement).scalars())


@pytest.mark.parametrize("path", PAGES)
def test_postgresql_keeps_a_pages_statements_prepared_across_requests(postgres_app, path):
    """psycopg prepares a statement at its fifth run and forgot all of them at the ROLLBACK
    that ended every request: the pages' statements were planned again on each."""
    client = administrator_client(postgres_app)
    for _ in range(6):
        response = client.get(path)
        assert response.status_code == 200
    prepared = _prepared(postgres_app)
    # The figures (read from the seat counters) and, on the People page, the page of people.
    assert any("FROM licenses_seat_counter" in text for text in prepared), prepared
    if "people" in path:
        assert any("ORDER BY users.id" in text for text in prepared), prepared


def _first_name(app, user_id: int = 1) -> str:
    with app.app_context():
        return wsgi.db.session.get(wsgi.User, user_id).first_name


@pytest.fixture(params=["sqlite", "postgresql"])
def either_app(request):
    """The demo app on SQLite, then on PostgreSQL."""
    name = "app" if request.param == "sqlite" else "postgres_app"
    return request.getfixturevalue(name)


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize("how", ["pending", "flushed", "statement"])
def test_a_page_never_commits_what_the_host_changed_before_it(either_app, path, how):
    """A host hook that changes something and leaves it uncommitted: the page reads, and the
    change is rolled back at the end of the request as before, not committed with the read."""
    app = either_app
    before = _first_name(app)

    @app.before_request
    def host_change():
        if how == "statement":
            change = sa.text("update users set first_name = 'Changed' where id = 1")
            wsgi.db.session.execute(change)
            return
        wsgi.db.session.get(wsgi.User, 1).first_name = "Changed"
        if how == "flushed":
            wsgi.db.session.flush()

    response = administrator_client(app).get(path)
    assert response.status_code == 200
    assert _first_name(app) == before != "Changed"

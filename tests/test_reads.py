"""The pages' reads (intranet_licenses.reads): on PostgreSQL the demo gives them a bind of
their own, where their statements stay prepared; the host's session is never touched."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import wsgi
from tests.conftest import PASSWORD, administrator_client, demo_app_on

PAGES = [
    "/admin/licenses/",
    "/admin/licenses/summary",
    "/admin/licenses/people",
    "/admin/licenses/people?q=ad",
]


def _prepared(app) -> dict[str, int]:
    """The statements prepared on the pages' read connection (the read pool holds one), each
    with the number of times its generic plan ran."""
    with app.app_context():
        with wsgi.db.engines["licenses_reads"].connect() as conn:
            statement = sa.text("select statement, generic_plans from pg_prepared_statements")
            return dict(conn.execute(statement).all())


@pytest.mark.parametrize("path", PAGES)
def test_a_pages_statements_stay_prepared_while_host_pages_roll_back(postgres_app, path):
    """psycopg prepares a statement at its fifth run on a connection and forgets all of them
    at a ROLLBACK, which ends every request that wrote nothing: read on the host's session,
    the pages' statements were planned again on every view."""
    client = administrator_client(postgres_app)
    for _ in range(6):
        assert client.get(path).status_code == 200
        assert client.get("/hello").status_code == 200  # a host page: it rolls back
    prepared = _prepared(postgres_app)
    # The figures and, on the People page, the page of people; the demo's read bind has
    # PostgreSQL plan each once (plan_cache_mode), not again for each view's values.
    figures = {t: n for t, n in prepared.items() if "FROM licenses_seat_counter" in t}
    assert figures and min(figures.values()) >= 1, prepared
    if "q=" in path:  # a search: the page of people is a statement of its own
        people = [n for text, n in prepared.items() if "ORDER BY users.id" in text]
        assert people and min(people) >= 1, prepared
    elif "people" in path:  # else it is read with the figures
        assert any("people_rows" in text for text in figures), prepared
    with postgres_app.app_context():
        assert wsgi.db.engines["licenses_reads"].pool.checkedout() == 0


def test_the_pages_read_outside_the_hosts_transaction(postgres_app):
    """The reads run on the bind's connection: the host's session runs only the host's
    statement (the user load), and ours run on the bind's."""
    seen = {}
    with postgres_app.app_context():
        for name, engine in wsgi.db.engines.items():
            seen[name] = []
            sa.event.listen(engine, "before_cursor_execute",
                            lambda *args, name=name: seen[name].append(args[2]))  # fmt: skip
    response = administrator_client(postgres_app).get("/admin/licenses/people?q=ad")
    assert response.status_code == 200 and "admin" in response.text
    assert len(seen[None]) == 1 and "FROM users" in seen[None][0]
    assert len(seen["licenses_reads"]) == 2  # the figures with the count, the page


def test_without_a_read_bind_the_pages_read_on_the_session(postgres_url, vendor_key,
                                                           make_license, tmp_path):  # fmt: skip
    app = demo_app_on(postgres_url, vendor_key, make_license(), tmp_path / "instance",
                      LICENSES_READ_BIND=None)  # fmt: skip
    on_bind = []
    with app.app_context():
        sa.event.listen(wsgi.db.engines["licenses_reads"], "before_cursor_execute",
                        lambda *args: on_bind.append(args[2]))  # fmt: skip
    try:
        client = app.test_client()
        client.post("/login", data={"username": "admin", "password": PASSWORD})
        for path in PAGES:
            response = client.get(path)
            assert response.status_code == 200 and "admin" in response.text, path
        assert on_bind == []
    finally:
        with app.app_context():
            wsgi.dispose_engines()


def _first_name(app, user_id: int = 1) -> str:
    with app.app_context():
        return wsgi.db.session.get(wsgi.User, user_id).first_name


@pytest.fixture(params=["sqlite", "postgresql"])
def either_app(request):
    """The demo app on SQLite (reading on the session), then on PostgreSQL (its read bind)."""
    return request.getfixturevalue("app" if request.param == "sqlite" else "postgres_app")


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize("how", ["pending", "flushed", "statement"])
def test_a_page_never_commits_what_the_host_changed_before_it(either_app, path, how):
    """A host hook that changes something and leaves it uncommitted: the page reads, and the
    change is rolled back at the end of the request, as the host expects."""
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

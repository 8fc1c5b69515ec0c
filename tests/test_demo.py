"""The demo intranet: init-db, seed-demo, every account logs in, the figures DESIGN.md names."""

from __future__ import annotations

import pytest
from conftest import app_config

import wsgi
from intranet_licenses import seats
from intranet_licenses.models import Profile, utcnow


@pytest.fixture
def demo(tmp_path, vendor_key):
    app = wsgi.create_app(
        app_config(f"sqlite:///{tmp_path / 'demo.db'}", vendor_key),
        instance_path=str(tmp_path / "instance"),
    )
    runner = app.test_cli_runner()
    assert runner.invoke(args=["init-db"]).exit_code == 0
    result = runner.invoke(args=["seed-demo", "--password", "s3cret pass"])
    assert result.exit_code == 0, result.output
    yield app
    with app.app_context():
        wsgi.dispose_engines()


def test_seed_demo_makes_its_own_vendor_key_and_license(demo, tmp_path):
    instance = tmp_path / "instance"
    assert (instance / "vendor-private.pem").stat().st_mode & 0o077 == 0
    assert demo.config["LICENSES_PUBLIC_KEYS"] == [str(instance / "vendor-public.pem")]
    result = demo.test_cli_runner().invoke(args=["licenses", "status"])
    assert result.exit_code == 0
    assert result.output.splitlines()[1] == (
        "Number of Users 58 (53 in intranet area), excluding the administrator account"
    )
    with demo.app_context():
        figures = seats.figures(wsgi.db.session, utcnow())
    assert all(f.free >= 10 for f in figures)
    assert {f.pool: f.waiting for f in figures} == {"intranet": 0, "extranet": 2, "readonly": 0}


@pytest.mark.parametrize("username", ["admin", "sysadmin", "peopleadmin", "jennifer"])
def test_every_demo_account_logs_in_with_the_seeded_password(demo, username):
    client = demo.test_client()
    response = client.post("/login", data={"username": username, "password": "s3cret pass"})
    assert response.status_code == 302 and response.headers["Location"] == "/"
    home = client.get("/").get_data(as_text=True)
    assert f"Signed in as <strong>{username}</strong>" in home


def test_a_wrong_password_is_refused(demo):
    client = demo.test_client()
    response = client.post("/login", data={"username": "jennifer", "password": "nope"})
    assert response.status_code == 200
    assert "Wrong username or password." in response.get_data(as_text=True)


def test_waiting_and_blocked_demo_people_are_told_why_at_login(demo):
    with demo.app_context():
        session = wsgi.db.session
        waiting = session.scalars(
            wsgi.db.select(Profile.user_id).where(Profile.block_reason == "license")
        ).first()
        blocked = session.scalars(
            wsgi.db.select(Profile.user_id).where(Profile.block_reason == "admin")
        ).first()
        waiting_name = session.get(wsgi.User, waiting).username
        blocked_name = session.get(wsgi.User, blocked).username
    client = demo.test_client()
    page = client.post("/login", data={"username": waiting_name, "password": "s3cret pass"})
    assert page.status_code == 403
    assert "Your account is waiting for a free license." in page.get_data(as_text=True)
    page = client.post("/login", data={"username": blocked_name, "password": "s3cret pass"})
    assert "Your account is blocked." in page.get_data(as_text=True)


def test_a_person_blocked_while_logged_in_is_stopped_at_the_next_request(demo):
    client = demo.test_client()
    client.post("/login", data={"username": "jennifer", "password": "s3cret pass"})
    assert client.get("/").status_code == 200
    result = demo.test_cli_runner().invoke(args=["licenses", "people", "block", "jennifer"])
    assert result.exit_code == 0
    page = client.get("/documents/1")
    assert page.status_code == 403
    assert "Your account is blocked" in page.get_data(as_text=True)
    assert client.get("/").status_code == 302  # logged out


def test_the_summary_shows_the_demo_document_line(demo):
    client = demo.test_client()
    client.post("/login", data={"username": "sysadmin", "password": "s3cret pass"})
    page = client.get("/admin/licenses/summary").get_data(as_text=True)
    assert "Number of Documents 93 (98 including versions)" in page


def test_seed_demo_if_empty_leaves_a_seeded_demo_alone(demo):
    result = demo.test_cli_runner().invoke(args=["seed-demo", "--if-empty"])
    assert result.output.strip() == "The demo is seeded already."
    client = demo.test_client()
    response = client.post("/login", data={"username": "admin", "password": "s3cret pass"})
    assert response.status_code == 302


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("//evil.example/x", "/"),
        ("https://evil.example/", "/"),
        ("/documents/1", "/documents/1"),
        ("/\r\nX", "/"),  # a line break in the Location header was a 500
    ],
)
def test_login_only_follows_next_on_this_site(demo, target, expected):
    client = demo.test_client()
    response = client.post(
        "/login",
        query_string={"next": target},
        data={"username": "jennifer", "password": "s3cret pass"},
    )
    assert response.headers["Location"] == expected


def test_the_hello_page_needs_a_login_and_greets_the_person(demo):
    client = demo.test_client()
    assert client.get("/hello").headers["Location"].startswith("/login")
    client.post("/login", data={"username": "jennifer", "password": "s3cret pass"})
    page = client.get("/hello")
    assert page.status_code == 200
    assert "Hello, Jennifer" in page.get_data(as_text=True)


def test_a_document_id_past_the_integer_range_is_not_found(demo):
    client = demo.test_client()
    client.post("/login", data={"username": "jennifer", "password": "s3cret pass"})
    assert client.get("/documents/1").status_code == 200
    assert client.get("/documents/9223372036854775808").status_code == 404


def test_the_demo_adds_its_read_pool_to_binds_already_configured(tmp_path):
    """On PostgreSQL the demo adds the pages' read bind to the binds the configuration names
    (it used to keep theirs and drop its own, while LICENSES_READ_BIND still named it: every
    figure page a KeyError)."""
    app = wsgi.create_app(
        {
            "SQLALCHEMY_DATABASE_URI": "postgresql://nobody@127.0.0.1:1/none",
            "SQLALCHEMY_BINDS": {"archive": f"sqlite:///{tmp_path / 'archive.db'}"},
        },
        instance_path=str(tmp_path / "instance"),
    )
    binds = app.config["SQLALCHEMY_BINDS"]
    assert set(binds) == {"archive", "licenses_reads"}
    assert app.config["LICENSES_READ_BIND"] == "licenses_reads"
    assert binds["licenses_reads"]["url"].startswith("postgresql+psycopg://nobody@")
    with app.app_context():
        assert set(wsgi.db.engines) == {None, "archive", "licenses_reads"}
        wsgi.dispose_engines()

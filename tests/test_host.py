"""A second host with its own user model, layout and roles mounts the extension."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from minimal_host.app import Member, create_app, db

from intranet_licenses.models import Profile, SeatCounter

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def host(tmp_path, vendor_key, make_license):
    yield from _host_on(f"sqlite:///{tmp_path / 'members.db'}", tmp_path, vendor_key, make_license)


def _host_on(url, tmp_path, vendor_key, make_license):
    app = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": url,
            "LICENSES_PUBLIC_KEYS": [vendor_key.public_path.read_text()],
            "LICENSES_SITE_NAME": "members.example.com",
        }
    )
    with app.app_context():
        db.create_all()
        # Members that existed before the extension: upgrade adopts them.
        db.session.add(Member(login="root", given_name="Root", family_name="Admin", roles="it hr"))
        db.session.add(Member(login="olga", given_name="Olga", family_name="Old"))
        db.session.commit()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["licenses", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "Created profiles for 2 people who had none." in result.output
    license_file = tmp_path / "members.lic"
    license_file.write_text(make_license(intranet=3, **{"Host-Name": "members.example.com"}))
    result = runner.invoke(args=["licenses", "install", str(license_file)])
    assert result.exit_code == 0, result.output
    yield app
    with app.app_context():
        db.engine.dispose()


def get(app, path, member=None):
    headers = {"X-Member": member} if member else {}
    return app.test_client().get(path, headers=headers)


def test_the_host_renders_the_pages_inside_its_own_layout(host):
    page = get(host, "/licensing/", "root")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Members Portal header" in html
    assert "License is valid." in html
    assert "1 of 3 in use" in html  # olga; root is the administrator account
    people = get(host, "/licensing/people", "root").get_data(as_text=True)
    assert "olga" in people and "Members Portal header" in people


def test_a_host_template_overrides_the_shipped_one(host):
    html = get(host, "/licensing/summary", "root").get_data(as_text=True)
    assert "Members Portal summary (host template)" in html
    assert "Number of Users 1 (1 in intranet area), excluding the administrator account" in html


def test_roles_come_from_the_host_callback(host):
    with host.app_context():
        db.session.add(Member(login="hanna", given_name="Hanna", family_name="HR", roles="hr"))
        db.session.commit()
    assert get(host, "/licensing/", "hanna").status_code == 403
    assert get(host, "/licensing/people", "hanna").status_code == 200
    assert get(host, "/licensing/people", "olga").status_code == 403
    anonymous = get(host, "/licensing/people")
    assert anonymous.status_code == 302
    assert anonymous.headers["Location"].startswith("/sign-in?next=")


def test_host_orm_writes_are_held_to_the_seats(host):
    from intranet_licenses import SeatLimitExceeded

    with host.app_context():
        db.session.add(Member(login="m2", given_name="M", family_name="Two"))
        db.session.add(Member(login="m3", given_name="M", family_name="Three"))
        db.session.commit()
        db.session.add(Member(login="m4", given_name="M", family_name="Four"))
        with pytest.raises(SeatLimitExceeded, match="3 of 3 seats are in use"):
            db.session.commit()
        db.session.rollback()
        assert db.session.scalar(sa.select(SeatCounter.used).filter_by(pool="intranet")) == 3
        olga = db.session.scalar(sa.select(Member).filter_by(login="olga"))
        olga.enabled = False
        db.session.commit()
        db.session.add(Member(login="m4", given_name="M", family_name="Four"))
        db.session.commit()
        m4 = db.session.scalar(sa.select(Member).filter_by(login="m4"))
        profile = db.session.get(Profile, m4.member_no)
        assert (profile.seat_pool, profile.source, profile.username_key) == (
            "intranet",
            "host",
            "m4",
        )


def test_a_blocked_member_is_stopped_on_every_request(host):
    with host.app_context():
        olga = db.session.scalar(sa.select(Member).filter_by(login="olga"))
        olga.enabled = False
        olga.roles = "hr"
        db.session.commit()
    page = get(host, "/licensing/people", "olga")
    assert page.status_code == 403
    assert "Your account is blocked" in page.get_data(as_text=True)


def test_the_wheel_installed_in_a_new_virtualenv_serves_the_second_host(tmp_path):
    """`pip wheel .`, a fresh venv, the wheel with its dependencies, the host renders."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
    )
    (wheel,) = wheels.glob("intranet_licenses-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
    )
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        import intranet_licenses
        assert "site-packages" in intranet_licenses.__file__, intranet_licenses.__file__
        from minimal_host.app import Member, create_app, db
        app = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite:///" + sys.argv[2]})
        with app.app_context():
            db.create_all()
            db.session.add(Member(login="root", given_name="R", family_name="A", roles="it hr"))
            db.session.commit()
        result = app.test_cli_runner().invoke(args=["licenses", "upgrade"])
        assert result.exit_code == 0, result.output
        client = app.test_client()
        for path in ["/licensing/", "/licensing/summary", "/licensing/people",
                     "/licensing/static/licenses.css"]:
            response = client.get(path, headers={"X-Member": "root"})
            print(path, response.status_code, len(response.data))
            assert response.status_code == 200, path
        print("No license is installed." in client.get(
            "/licensing/", headers={"X-Member": "root"}).get_data(as_text=True))
        """
    )
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "minimal_host").symlink_to(ROOT / "tests" / "minimal_host")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FLASK_APP")}
    result = subprocess.run(
        [str(python), "-c", script, str(outside), str(tmp_path / "w.db")],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "True"
    assert "/licensing/people 200" in result.stdout


@pytest.fixture
def postgres_host(postgres_url, tmp_path, vendor_key, make_license):
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    yield from _host_on(url, tmp_path, vendor_key, make_license)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_people_page_reads_a_host_column_of_its_own_type(request, database):
    """The member's email is a TypeDecorator of the host's (json_rows cannot give it back
    unchanged): on PostgreSQL the People page reads its people on their own instead of with
    the figures, with or without a search or a filter, and shows what the host's type
    wrote."""
    host = request.getfixturevalue("host" if database == "sqlite" else "postgres_host")
    with host.app_context():
        db.session.add(Member(login="mixed", given_name="Mia", family_name="Case",
                              mail="Mia.Case@Example.COM"))  # fmt: skip
        db.session.commit()
    for path in ["/licensing/people", "/licensing/people?state=active", "/licensing/people?q=mi"]:
        page = get(host, path, "root")
        assert page.status_code == 200, path
        assert "mia.case@example.com" in page.get_data(as_text=True), path


def test_a_host_column_json_cannot_give_back_keeps_the_page_out_of_json(host):
    """Whatever the database: the People page's JSON column is not built for the minimal
    host (its email is a TypeDecorator), and is for the demo's plain columns."""
    from intranet_licenses import people
    from intranet_licenses.extension import adapter

    no_filters = (None, None, False, False, False)
    with host.test_request_context():
        assert people._rows_column(adapter(), no_filters, None) is None

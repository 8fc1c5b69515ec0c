"""The count of people waiting for a license per pool, kept by triggers (migration 0006).

Every way a profile starts or stops waiting, or moves between pools while waiting, must
leave ``licenses_seat_counter.waiting`` equal to a count of the profiles: the seat service,
set-based statements, and SQL written by the host behind the seat service's back. Checked
on SQLite and on PostgreSQL, whose triggers are written separately.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command
from conftest import PASSWORD, demo_app_on

import wsgi
from intranet_licenses import schema, seats
from intranet_licenses.models import AWAITING_LICENSE, BLOCKED_BY_ADMIN, utcnow


@pytest.fixture(params=["sqlite", "postgresql"])
def any_app(request, make_license, vendor_key, tmp_path):
    """The demo app with 2 intranet and 1 extranet seats, on SQLite or PostgreSQL."""
    limits = make_license(intranet=2, extranet=1)
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'waiting.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    app = demo_app_on(url, vendor_key, limits, tmp_path / "instance")
    yield app
    with app.app_context():
        wsgi.db.engine.dispose()


def _add(session, username: str, area: str = "primary"):
    return seats.add_person(
        session,
        username=username,
        first_name="W",
        surname="Aiting",
        email="",
        area=area,
        actor="t",
        now=utcnow(),
        path="test",
        wait_when_full=True,
    )


def _counts(app) -> tuple[dict[str, int], dict[str, int]]:
    """(the stored waiting counts, the same counted from the profiles), committed state."""
    with app.app_context():
        session = wsgi.db.session
        return seats.waiting(session), seats._counted_waiting(session)


def _check(app, intranet: int, extranet: int = 0) -> None:
    stored, counted = _counts(app)
    assert counted == {"intranet": intranet, "extranet": extranet, "readonly": 0}
    assert stored == counted


def test_every_change_of_a_waiting_person_keeps_the_count(any_app):
    app = any_app
    with app.app_context():
        session = wsgi.db.session
        for name in ("a1", "a2", "w1", "w2", "w3"):
            _add(session, name)  # two seats: a1 and a2 active, w1 to w3 wait
        _add(session, "x1", "partners")
        _add(session, "xw", "partners")  # one extranet seat: xw waits
        session.commit()
    _check(app, 3, 1)

    with app.app_context():
        session = wsgi.db.session
        # Blocked by an administrator instead: no longer waiting for a license.
        seats.block(session, seats.find_person(session, "w3"), actor="t", now=utcnow(), path="t")
        session.commit()
    _check(app, 2, 1)

    with app.app_context():
        session = wsgi.db.session
        # A waiting person moved to the extranet area waits there (the pool is full).
        seats.move(
            session, seats.find_person(session, "w2"), area="partners", readonly=False,
            actor="t", now=utcnow(), path="t",
        )  # fmt: skip
        session.commit()
    _check(app, 1, 2)

    with app.app_context():
        session = wsgi.db.session
        seats.delete(session, seats.find_person(session, "xw"), actor="t", now=utcnow(), path="t")
        seats.delete(session, seats.find_person(session, "a1"), actor="t", now=utcnow(), path="t")
        session.commit()
    _check(app, 1, 1)

    with app.app_context():
        session = wsgi.db.session
        result = seats.activate_waiting(session, actor="t", now=utcnow(), path="t")
        session.commit()
    assert result.activated == ["w1"]
    _check(app, 0, 1)


def test_sql_behind_the_seat_service_keeps_the_count(any_app):
    """Set-based statements of the host (or of a bulk path) fire the triggers too."""
    app = any_app
    with app.app_context():
        session = wsgi.db.session
        for name in ("a1", "a2", "w1", "w2"):
            _add(session, name)
        session.commit()
        profiles = sa.table("licenses_profile", sa.column("block_reason"), sa.column("pool"))
        session.execute(
            profiles.update()
            .where(profiles.c.block_reason == AWAITING_LICENSE)
            .values(block_reason=BLOCKED_BY_ADMIN)
        )
        session.commit()
    _check(app, 0)
    with app.app_context():
        session = wsgi.db.session
        session.execute(sa.text("update licenses_profile set block_reason = 'license' "
                                "where block_reason = 'admin'"))  # fmt: skip
        session.execute(sa.text("update licenses_profile set pool = 'readonly' "
                                "where block_reason = 'license'"))  # fmt: skip
        session.commit()
    stored, counted = _counts(app)
    assert counted == {"intranet": 0, "extranet": 0, "readonly": 2} == stored
    with app.app_context():
        session = wsgi.db.session
        session.execute(sa.text("delete from licenses_profile where block_reason = 'license'"))
        session.commit()
    _check(app, 0)


def test_recount_repairs_a_waiting_count_written_by_hand(any_app):
    app = any_app
    with app.app_context():
        session = wsgi.db.session
        for name in ("a1", "a2", "w1"):
            _add(session, name)
        session.commit()
        session.execute(sa.text("update licenses_seat_counter set waiting = 40"))
        session.commit()
        findings = seats.recount(session, actor="t", now=utcnow())
        session.commit()
    assert "The intranet count of people waiting for a license read 40; it now reads 1." in (
        findings
    )
    assert "The extranet count of people waiting for a license read 40; it now reads 0." in (
        findings
    )
    _check(app, 1)


def test_the_summary_shows_the_count(any_app):
    app = any_app
    with app.app_context():
        session = wsgi.db.session
        for name in ("a1", "a2", "w1", "w2", "x1", "xw", "xv"):
            _add(session, name, "partners" if name.startswith("x") else "primary")
        session.commit()
    client = app.test_client()
    client.post("/login", data={"username": "admin", "password": PASSWORD})
    page = client.get("/admin/licenses/summary").get_data(as_text=True)
    assert "Intranet pool: 2 of 2 in use, 2 waiting for a license" in page
    assert "Extranet pool: 1 of 1 in use, 2 waiting for a license" in page


def test_the_migration_counts_the_people_already_waiting(tmp_path):
    """An installation upgraded from 0005 starts with the right counts."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        schema.upgrade(engine, "0005_nfc_keys")
        with engine.begin() as conn:
            for user_id, pool, reason in [
                (1, "intranet", AWAITING_LICENSE),
                (2, "intranet", AWAITING_LICENSE),
                (3, "extranet", AWAITING_LICENSE),
                (4, "intranet", BLOCKED_BY_ADMIN),
                (5, "intranet", None),
            ]:
                conn.execute(
                    sa.text(
                        "insert into licenses_profile (user_id, area, readonly, pool, "
                        "block_reason, exempt, source, created_at, username_key, "
                        "first_name_key, surname_key, email_key) values (:id, 'primary', "
                        "false, :pool, :reason, false, 'host', '2026-01-01', :key, '', '', '')"
                    ),
                    {"id": user_id, "pool": pool, "reason": reason, "key": f"u{user_id}"},
                )
        schema.upgrade(engine)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("select pool, waiting from licenses_seat_counter"))
            assert dict(rows.all()) == {"intranet": 2, "extranet": 1, "readonly": 0}
        with engine.begin() as conn:  # and back: the triggers go with the column
            command.downgrade(schema._config(conn), "0005_nfc_keys")
        with engine.begin() as conn:
            conn.execute(sa.text("update licenses_profile set block_reason = null"))
            columns = [c["name"] for c in sa.inspect(conn).get_columns("licenses_seat_counter")]
        assert "waiting" not in columns
    finally:
        engine.dispose()

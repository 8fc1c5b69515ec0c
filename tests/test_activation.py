"""'Activate waiting' in batches: oldest first per pool, exact seats, also under a race."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from conftest import demo_app_on, person_state, usage

import wsgi
from intranet_licenses import licensing, seats
from intranet_licenses.models import AWAITING_LICENSE, BLOCKED_BY_ADMIN, AuditEvent, utcnow

T1 = datetime(2026, 11, 1, 9, 0)
T2 = T1 + timedelta(days=1)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def full_app(request, vendor_key, make_license, tmp_path):
    """The demo with no intranet or extranet seat, and people waiting for one:
    i00..i09 since T2, then i10..i19 since T1 (older, though created later), and
    e00..e05 in the extranet since T1."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'activation.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    app = demo_app_on(url, vendor_key, make_license(intranet=0, extranet=0), tmp_path / "instance")
    batches = [
        (T2, [(f"i{n:02}", "primary") for n in range(10)]),
        (T1, [(f"i{n:02}", "primary") for n in range(10, 20)]),
        (T1, [(f"e{n:02}", "partners") for n in range(6)]),
    ]
    with app.app_context():
        session = wsgi.db.session
        for since, people in batches:
            result = seats.admit_or_wait(
                session,
                [seats.NewPerson(u, "W", "Aiting", "", area=a) for u, a in people],
                source="directory",
                path="test",
                actor="test",
                now=since,
            )
            assert [active for _, active in result.created] == [False] * len(people)
        session.commit()
    yield app
    with app.app_context():
        wsgi.dispose_engines()


def _install(app, make_license, **limits):
    with app.app_context():
        text = make_license(**limits)
        licensing.install(wsgi.db.session, text, actor="test", now=utcnow(), path="test")
        wsgi.db.session.commit()


def _activate(app):
    with app.app_context():
        result = seats.activate_waiting(wsgi.db.session, actor="pa", now=utcnow(), path="page")
        wsgi.db.session.commit()
    return result


def _audit(app, outcome):
    with app.app_context():
        return wsgi.db.session.scalars(
            sa.select(AuditEvent.subject)
            .where(AuditEvent.action == "activate", AuditEvent.outcome == outcome)
            .order_by(AuditEvent.id)
        ).all()


def _admit_two_late(app):
    """Two people admitted by someone else (they take two intranet seats)."""
    for name in ("late1", "late2"):
        with app.app_context():
            seats.add_person(
                wsgi.db.session, username=name, first_name="L", surname="Ate", email="",
                actor="other", now=utcnow(), path="other",
            )  # fmt: skip
            wsgi.db.session.commit()


def _first_reading_says(monkeypatch, *, used: int) -> None:
    """activate_waiting's reading of the free seats finds ``used`` seats taken in every
    pool; the readings after it (the safety net's) are the real ones."""
    read_pools = seats._read_pools

    def reading(session, conn, pools, today, **kwargs):
        read, taken = read_pools(session, conn, pools, today, **kwargs)
        said = {p: seats._PoolReading(used, r.episode_open) for p, r in read.readings.items()}
        monkeypatch.setattr(seats, "_read_pools", read_pools)  # only the first reading
        return seats._PoolsRead(read.pools, said, read.current), taken

    monkeypatch.setattr(seats, "_read_pools", reading)


def _check_exact(app):
    """Counters, waiting counts and profiles agree: recount finds nothing to repair."""
    with app.app_context():
        session = wsgi.db.session
        findings = seats.recount(session, actor="test", now=utcnow())
        session.rollback()
    assert findings == []


def test_activate_waiting_in_batches_takes_the_oldest_of_each_pool(
    full_app, make_license, monkeypatch
):
    monkeypatch.setattr(seats, "ACTIVATE_BATCH", 4)  # several batches, one partly filled
    _install(full_app, make_license, intranet=13, extranet=2)
    result = _activate(full_app)
    oldest_intranet = [f"i{n:02}" for n in range(10, 20)] + ["i00", "i01", "i02"]
    assert sorted(result.activated) == sorted(oldest_intranet + ["e00", "e01"])
    assert result.still_waiting == 7 + 4
    assert usage(full_app) == {"intranet": 13, "extranet": 2, "readonly": 0}
    with full_app.app_context():
        assert seats.waiting(wsgi.db.session) == {"intranet": 7, "extranet": 4, "readonly": 0}
    assert person_state(full_app, "i03") == (False, "primary", "intranet", AWAITING_LICENSE, None)
    assert person_state(full_app, "i10") == (True, "primary", "intranet", None, "intranet")
    # One record per person activated, and one refusal per pool that filled (the first
    # who did not fit), as when people were activated one by one.
    assert sorted(_audit(full_app, "ok")) == sorted(result.activated)
    assert _audit(full_app, "refused") == ["e02", "i03"]  # in the order they waited
    _check_exact(full_app)
    assert _activate(full_app).activated == []  # nothing more fits


def test_a_batch_that_finds_fewer_seats_than_it_read_is_done_one_by_one(
    full_app, make_license, monkeypatch
):
    """The free seats were read before two people were admitted (here: a reading that
    missed them): the batch's conditional UPDATE refuses, and the people are activated
    one by one, oldest first, until the pool is full."""
    _install(full_app, make_license, intranet=5, extranet=0)
    _admit_two_late(full_app)
    _first_reading_says(monkeypatch, used=0)  # a reading that missed them
    result = _activate(full_app)
    assert result.activated == ["i10", "i11", "i12"]  # the three oldest: 5 seats, 2 taken
    assert usage(full_app)["intranet"] == 5
    assert _audit(full_app, "refused") == ["i13", "e00"]
    _check_exact(full_app)


def test_after_a_refused_batch_no_younger_person_of_its_pools_is_activated_first(
    full_app, make_license, monkeypatch
):
    """A refused batch's people are tried one by one after the other batches: the
    batches that came after it, of the same pool, must not take the seats first (the
    seats read were 5, two were gone: the oldest three are activated, not i14 before
    them)."""
    monkeypatch.setattr(seats, "ACTIVATE_BATCH", 4)  # i10..i13 refused, then [i14]
    _install(full_app, make_license, intranet=5, extranet=0)
    _admit_two_late(full_app)
    _first_reading_says(monkeypatch, used=0)  # a reading that missed them
    result = _activate(full_app)
    assert result.activated == ["i10", "i11", "i12"]
    assert person_state(full_app, "i14")[3] == AWAITING_LICENSE
    assert usage(full_app)["intranet"] == 5
    assert _audit(full_app, "refused") == ["i13", "e00"]
    _check_exact(full_app)


def test_a_person_blocked_by_an_administrator_meanwhile_stays_blocked(
    full_app, make_license, monkeypatch
):
    """The pool read full, so its people are tried one by one; before that, an
    administrator blocked i10 (the oldest): i10 stays blocked by the administrator and the
    seats go to the next three."""
    _install(full_app, make_license, intranet=3, extranet=0)
    _first_reading_says(monkeypatch, used=10**6)
    one_by_one = seats._activate_one_by_one

    def block_i10_first(session, user_ids, result, **kwargs):
        i10 = session.scalar(sa.select(wsgi.User).filter_by(username="i10"))
        seats.block(session, i10, actor="admin", now=utcnow(), path="page")
        one_by_one(session, user_ids, result, **kwargs)

    monkeypatch.setattr(seats, "_activate_one_by_one", block_i10_first)
    result = _activate(full_app)
    assert result.activated == ["i11", "i12", "i13"]
    assert person_state(full_app, "i10")[3] == BLOCKED_BY_ADMIN
    assert usage(full_app)["intranet"] == 3
    _check_exact(full_app)


@pytest.mark.postgres
def test_an_admission_committed_during_activation_keeps_the_limit_on_postgresql(
    postgres_url, vendor_key, make_license, tmp_path, monkeypatch
):
    """A real race: after the free seats were read, another request admits two people and
    commits before the first batch takes its seats."""
    app = demo_app_on(postgres_url, vendor_key, make_license(intranet=0), tmp_path / "i")
    with app.app_context():
        seats.admit_or_wait(
            wsgi.db.session,
            [seats.NewPerson(f"w{n}", "W", "Aiting", "") for n in range(6)],
            source="directory", path="test", actor="test", now=T1,
        )  # fmt: skip
        wsgi.db.session.commit()
    _install(app, make_license, intranet=5)
    original = seats._activate_batch
    other = wsgi.create_app(dict(app.config), instance_path=str(tmp_path / "other"))

    def admit_two_elsewhere_first(session, user_ids, result, **kwargs):
        if user_ids:
            with other.app_context():  # its own session, its own connection
                for name in ("late1", "late2"):
                    seats.add_person(
                        wsgi.db.session, username=name, first_name="L", surname="Ate",
                        email="", actor="other", now=utcnow(), path="other",
                    )  # fmt: skip
                wsgi.db.session.commit()
            monkeypatch.setattr(seats, "_activate_batch", original)
        return original(session, user_ids, result, **kwargs)

    monkeypatch.setattr(seats, "_activate_batch", admit_two_elsewhere_first)
    result = _activate(app)
    assert result.activated == ["w0", "w1", "w2"]
    assert usage(app)["intranet"] == 5
    assert person_state(app, "w3")[3] == AWAITING_LICENSE
    _check_exact(app)
    with other.app_context():
        wsgi.dispose_engines()
    with app.app_context():
        wsgi.dispose_engines()


def test_a_change_the_caller_has_not_flushed_yet_is_kept(full_app, make_license):
    """The batches re-read the people they activate: a change the caller made to one of
    them, not flushed yet, is written first, not overwritten."""
    _install(full_app, make_license, intranet=1, extranet=0)
    with full_app.app_context():
        session = wsgi.db.session
        with session.no_autoflush:
            user = seats.find_person(session, "i10")
            user.first_name = "Renamed"
            result = seats.activate_waiting(session, actor="pa", now=utcnow(), path="page")
        session.commit()
        assert result.activated == ["i10"]
        renamed = session.scalar(sa.select(wsgi.User.first_name).where(wsgi.User.id == user.id))
    assert renamed == "Renamed"
    assert person_state(full_app, "i10")[0] is True

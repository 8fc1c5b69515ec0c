"""The count of people waiting for a license per pool, kept by triggers (migration 0006).

Every way a profile starts or stops waiting, or moves between pools while waiting, must
leave ``licenses_seat_counter.waiting`` equal to a count of the profiles: the seat service,
set-based statements, and SQL written by the host behind the seat service's back. Checked
on SQLite and on PostgreSQL, whose triggers are written separately.
"""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from alembic import command
from conftest import PASSWORD, demo_app_on

import wsgi
from intranet_licenses import schema, seats
from intranet_licenses.models import AWAITING_LICENSE, BLOCKED_BY_ADMIN, POOLS, Profile, utcnow


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
        wsgi.dispose_engines()


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
        return seats.waiting(session), _counted(session)


def _counted(session) -> dict[str, int]:
    """The people awaiting a license per pool, counted from the profiles."""
    rows = session.execute(
        sa.select(Profile.pool, sa.func.count())
        .where(Profile.block_reason == AWAITING_LICENSE)
        .group_by(Profile.pool)
    ).all()
    return {pool: dict(rows).get(pool, 0) for pool in POOLS}


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
        seats.fold_waiting(session)  # one row per pool, as after a sync
        session.commit()
        session.execute(sa.text("update licenses_waiting_count set waiting = 40"))
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
            rows = conn.execute(sa.text("select pool, tx, waiting from licenses_waiting_count"))
            assert sorted(rows.all()) == [
                ("extranet", 0, 1),
                ("intranet", 0, 2),
                ("readonly", 0, 0),
            ]
        with engine.begin() as conn:  # and back: the triggers go with the table
            command.downgrade(schema._config(conn), "0005_nfc_keys")
        with engine.begin() as conn:
            conn.execute(sa.text("update licenses_profile set block_reason = null"))  # no trigger
            tables = sa.inspect(conn).get_table_names()
        assert "licenses_waiting_count" not in tables
    finally:
        engine.dispose()


# PostgreSQL: transactions that change who waits never wait for each other over the count --


@pytest.fixture
def full_pools(postgres_url, make_license, vendor_key, tmp_path):
    """The demo app on PostgreSQL with one intranet and one extranet seat, both taken, and
    one person waiting in each pool."""
    app = demo_app_on(
        postgres_url, vendor_key, make_license(intranet=1, extranet=1), tmp_path / "instance"
    )
    with app.app_context():
        session = wsgi.db.session
        for name, area in [("holder", "primary"), ("partner", "partners"),
                           ("early", "primary"), ("earlyx", "partners")]:  # fmt: skip
            _add(session, name, area)
        session.commit()
    yield app
    with app.app_context():
        wsgi.dispose_engines()


def _in_threads(app, *work):
    """Run each ``work(session, barrier)`` in a thread of its own with a session of its own,
    with a lock timeout of 2 s; returns the errors, as 'Type: first line'."""
    barrier = threading.Barrier(len(work), timeout=20)
    errors = []

    def run(job):
        with app.app_context():
            session = wsgi.db.session
            session.execute(sa.text("SET lock_timeout = '2s'"))
            try:
                job(session, barrier)
                session.commit()
            except Exception as exc:  # the test reports it
                session.rollback()
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")

    threads = [threading.Thread(target=run, args=(job,)) for job in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def test_two_transactions_making_people_wait_in_opposite_pools_do_not_deadlock(full_pools):
    """Each transaction leaves one person waiting in each pool, in opposite orders (two
    directory syncs at once): with the count on a row per pool, one of them deadlocked."""

    def waits(first, second, name):
        def job(session, barrier):
            _add(session, f"{name}1", first)
            barrier.wait()
            _add(session, f"{name}2", second)

        return job

    errors = _in_threads(
        full_pools, waits("primary", "partners", "a"), waits("partners", "primary", "b")
    )
    assert errors == []
    _check(full_pools, 3, 3)


def test_a_transaction_making_someone_wait_holds_up_nobody_in_that_pool(full_pools):
    """While one transaction has left someone waiting in the intranet pool and not yet
    committed, another frees an intranet seat, and a third makes someone wait there too."""
    waited = threading.Event()
    others_done = threading.Event()

    def sync_like(session, barrier):
        _add(session, "newcomer", "primary")
        waited.set()
        barrier.wait()
        others_done.wait(10)

    def release(session, barrier):
        waited.wait(10)
        barrier.wait()
        seats.block(session, seats.find_person(session, "holder"), actor="t", now=utcnow(),
                    path="t")  # fmt: skip
        session.commit()
        others_done.set()

    def another_wait(session, barrier):
        waited.wait(10)
        barrier.wait()
        _add(session, "late", "primary")

    errors = _in_threads(full_pools, sync_like, release, another_wait)
    assert errors == []
    _check(full_pools, 3, 1)  # early, newcomer and late wait; holder is blocked by an admin


def test_recount_keeps_waiting_changes_committed_while_it_runs(full_pools, monkeypatch):
    """Two people start waiting (other workers, committed) while recount runs: one between
    its fold and its count, one between its count and its write. Neither is lost nor
    counted twice."""

    def someone_waits(name):
        def other_worker():
            with full_pools.app_context():
                _add(wsgi.db.session, name, "primary")
                wsgi.db.session.commit()

        thread = threading.Thread(target=other_worker)
        thread.start()
        thread.join(10)

    real_fold, real_drift = seats.fold_waiting, seats._waiting_drift

    def fold_then_someone_waits(session, **options):
        real_fold(session, **options)
        if not options:  # recount's fold, not the other worker's own at its commit
            someone_waits("meanwhile1")

    def count_then_someone_waits(session):
        found = real_drift(session)
        someone_waits("meanwhile2")
        return found

    monkeypatch.setattr(seats, "fold_waiting", fold_then_someone_waits)
    monkeypatch.setattr(seats, "_waiting_drift", count_then_someone_waits)
    with full_pools.app_context():
        session = wsgi.db.session
        findings = seats.recount(session, actor="t", now=utcnow())
        session.commit()
    monkeypatch.undo()
    assert not [f for f in findings if "waiting" in f]
    _check(full_pools, 3, 1)
    with full_pools.app_context():
        session = wsgi.db.session
        seats.fold_waiting(session)
        session.commit()
        rows = session.execute(sa.text("select count(*) from licenses_waiting_count")).scalar()
    assert rows == 3  # folded: one row per pool
    _check(full_pools, 3, 1)


def test_the_rows_of_a_pool_stay_few_without_a_sync(full_pools):
    """Each transaction that changes who waits folds the rows of the ones before it."""
    for turn in range(30):
        with full_pools.app_context():
            session = wsgi.db.session
            area = "partners" if turn % 2 == 0 else "primary"
            person = seats.find_person(session, "early")
            seats.move(session, person, area=area, readonly=False, actor="t", now=utcnow(),
                       path="t")  # fmt: skip
            session.commit()
    with full_pools.app_context():
        rows = wsgi.db.session.execute(sa.text("select count(*) from licenses_waiting_count"))
        assert rows.scalar() <= 6  # the three folded rows, and the last transaction's
    _check(full_pools, 1, 1)


@pytest.mark.parametrize("first,second", [("primary", "partners"), ("partners", "primary")])
def test_recount_during_a_sync_that_takes_two_pools_does_not_deadlock(
    postgres_url, make_license, vendor_key, tmp_path, first, second
):
    """A sync's transaction admits into one pool (one flush) and later into the other, as
    it does batch by batch; a recount starts in between. It waits for the sync instead of
    holding the other pool's counter (with row locks one by one, one order deadlocked)."""
    app = demo_app_on(postgres_url, vendor_key, make_license(intranet=10, extranet=10),
                      tmp_path / "instance")  # fmt: skip
    errors = []
    started = threading.Event()

    def recounter():
        with app.app_context():
            session = wsgi.db.session
            started.set()
            try:
                seats.recount(session, actor="t", now=utcnow())
                session.commit()
            except Exception as exc:  # the test reports it
                session.rollback()
                errors.append(f"recount: {type(exc).__name__}: {str(exc).splitlines()[0]}")

    try:
        with app.app_context():
            session = wsgi.db.session
            _add(session, "a1", first)
            session.flush()
            thread = threading.Thread(target=recounter)
            thread.start()
            started.wait(10)
            time.sleep(0.5)  # the recount is waiting for the counters now
            _add(session, "a2", second)
            session.commit()
            thread.join(30)
        assert errors == []
        with app.app_context():
            assert seats.usage(wsgi.db.session) == {"intranet": 1, "extranet": 1, "readonly": 0}
    finally:
        with app.app_context():
            wsgi.dispose_engines()

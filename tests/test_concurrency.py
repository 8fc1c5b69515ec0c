"""Several processes racing for the last seats, on an SQLite file and on PostgreSQL."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import sqlalchemy as sa
from conftest import PASSWORD, app_config

import wsgi
from intranet_licenses import licensing, seats
from intranet_licenses.models import AuditEvent, SeatCounter, utcnow

PROCESSES = 8
ATTEMPTS = 400
SEATS = 100


def _attempts(args, barrier, results):
    """One worker process: its share of the attempts; puts (admitted, refused, errors)."""
    database_uri, config, worker, count = args
    app = wsgi.create_app({**config, "SQLALCHEMY_DATABASE_URI": database_uri})
    admitted = refused = 0
    errors: list[str] = []
    with app.app_context():
        session = wsgi.db.session
        session.execute(sa.select(1))  # connected before the start
        barrier.wait(timeout=120)  # every worker starts at once
        for attempt in range(count):
            try:
                seats.add_person(
                    session,
                    username=f"racer{worker}_{attempt}",
                    first_name="Race",
                    surname="Runner",
                    email="",
                    actor=f"worker{worker}",
                    now=utcnow(),
                    path="test",
                )
                session.commit()
                admitted += 1
            except seats.SeatLimitExceeded:
                session.commit()
                refused += 1
            except Exception as exc:  # a database error is a failure of the mechanism
                session.rollback()
                errors.append(f"{type(exc).__name__}: {exc}")
        wsgi.dispose_engines()
    results.put((admitted, refused, errors))


def _prepare(database_uri, vendor_key, make_license, tmp_path):
    config = app_config(database_uri, vendor_key)
    app = wsgi.create_app(config, instance_path=str(tmp_path / "instance"))
    result = app.test_cli_runner().invoke(args=["init-db", "--password", PASSWORD])
    assert result.exit_code == 0, result.output
    with app.app_context():
        licensing.install(
            wsgi.db.session, make_license(intranet=SEATS), actor="t", now=utcnow(), path="t"
        )
        wsgi.db.session.commit()
    return app, config


def _race(app, config, database_uri):
    """Run the workers while sampling the counter; returns results and the highest reading."""
    engine = sa.create_engine(database_uri.replace("postgresql://", "postgresql+psycopg://", 1))
    context = multiprocessing.get_context("spawn")
    share = ATTEMPTS // PROCESSES
    barrier = context.Barrier(PROCESSES)
    queue = context.Queue()
    workers = [
        context.Process(
            target=_attempts, args=((database_uri, config, worker, share), barrier, queue)
        )
        for worker in range(PROCESSES)
    ]
    for process in workers:
        process.start()
    highest = 0
    results = []
    deadline = time.time() + 300
    while len(results) < PROCESSES and time.time() < deadline:
        with engine.connect() as conn:
            used = conn.execute(
                sa.select(SeatCounter.used).where(SeatCounter.pool == "intranet")
            ).scalar_one()
        highest = max(highest, used)
        while not queue.empty():
            results.append(queue.get())
        time.sleep(0.01)
    for process in workers:
        process.join(timeout=60)
    engine.dispose()
    assert len(results) == PROCESSES, "a worker did not finish"
    return results, highest


def _check(app, results, highest):
    admitted = sum(r[0] for r in results)
    refused = sum(r[1] for r in results)
    errors = [e for r in results for e in r[2]]
    assert errors == []
    assert (admitted, refused) == (SEATS, ATTEMPTS - SEATS)
    assert highest <= SEATS
    with app.app_context():
        session = wsgi.db.session
        active = session.scalar(
            sa.select(sa.func.count())
            .select_from(wsgi.User)
            .where(wsgi.User.active.is_(True), wsgi.User.username.like("racer%"))
        )
        everyone = session.scalar(
            sa.select(sa.func.count())
            .select_from(wsgi.User)
            .where(wsgi.User.username.like("racer%"))
        )
        assert seats.usage(session)["intranet"] == SEATS
        assert active == everyone == SEATS
        # One audit row per attempt, with its outcome (an admission's row written before a
        # seat lost to another worker is withdrawn).
        outcomes = dict(
            session.execute(
                sa.select(AuditEvent.outcome, sa.func.count())
                .where(AuditEvent.action == "add", AuditEvent.subject.like("racer%"))
                .group_by(AuditEvent.outcome)
            ).all()
        )
        assert outcomes == {"ok": SEATS, "refused": ATTEMPTS - SEATS}
        findings = seats.recount(session, actor="t", now=utcnow())
        session.rollback()
        assert findings == []


def test_racing_for_the_last_seats_on_sqlite(tmp_path, vendor_key, make_license):
    database_uri = f"sqlite:///{tmp_path / 'race.db'}"
    app, config = _prepare(database_uri, vendor_key, make_license, tmp_path)
    results, highest = _race(app, config, database_uri)
    _check(app, results, highest)


def test_racing_for_the_last_seats_on_postgresql(postgres_url, tmp_path, vendor_key, make_license):
    app, config = _prepare(postgres_url, vendor_key, make_license, tmp_path)
    results, highest = _race(app, config, postgres_url)
    try:
        _check(app, results, highest)
    finally:
        with app.app_context():
            wsgi.dispose_engines()


@pytest.fixture(autouse=True)
def _postgres_env(monkeypatch):
    # The workers are spawned; they must not read the developer's DATABASE_URL.
    monkeypatch.delenv("DATABASE_URL", raising=False)

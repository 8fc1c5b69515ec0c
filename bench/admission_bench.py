"""Seat admission under contention: 8 processes race on PostgreSQL for 1,000 seats.

Compares the extension's real path (``seats.add_person`` through the demo app) with a bare
loop of the same inserts guarded by a conditional UPDATE of a counter row (psycopg, no ORM),
measured in the same run. Prints attempts per second for both, their ratio, the SQL round
trips per attempt and the over-allocations (which must be 0). Not a test; not run by
``make test``.

    .venv/bin/python bench/admission_bench.py [--url postgresql://postgres@127.0.0.1/test]
        [--processes 8] [--seats 1000] [--attempts 4000] [--runs 3]

What is timed, for both: from the moment every worker process has imported, built what it
needs (ours: the Flask app) and connected, to the moment the last one has made its last
attempt. Startup is outside the timed region (a barrier releases all workers at once).

What ours does that the bare loop does not (the product, not the benchmark's choice):

- checks the person's fields and that the username is free (case-insensitive), and judges
  the license in force (its row is read with the counter, in the same statement as the
  username check; the text is verified and parsed once per process);
- builds the user through the host's ORM model, so the safety-net ``before_flush`` listener
  runs, as for any host code, and the profile gets its search keys;
- writes an audit row for every attempt, admitted or refused (rule 11);
- on a refusal, reports the exceeded event, decided in the database (rule 6: one email per
  pool per episode; nothing more to decide when the reading found the episode open), and
  builds the refusal's sentence.

The bare loop writes the same user and profile rows on admission and nothing on refusal.
Neither hashes a password (the seat service does not set one).

A third loop, "audited", is the bare loop plus one audit row per attempt (admitted or
refused) in the same transaction: the least that any implementation keeping rule 11 writes.
Its ratio to the bare loop tells how much of the gap the product's rules set, whatever the
code; ours/audited tells how close ours is to that floor.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wsgi  # noqa: E402
from intranet_licenses import licensing, seats  # noqa: E402
from intranet_licenses.license_file import generate_key_pair, load_private_key, sign_text  # noqa: E402
from intranet_licenses.models import utcnow  # noqa: E402


def config(url: str, keys: Path) -> dict:
    return {
        "SQLALCHEMY_DATABASE_URI": url,
        "SECRET_KEY": "bench",
        "LICENSES_PUBLIC_KEYS": [str(keys / "public.pem")],
        "LICENSES_SITE_NAME": "bench.example.com",
        "DEMO_PASSWORD_METHOD": "pbkdf2:sha256:1000",
    }


def vendor_keys(prefix: str) -> Path:
    """A scratch folder holding a new vendor key pair (private.pem, public.pem)."""
    keys = Path(tempfile.mkdtemp(prefix=prefix))
    private_pem, public_pem = generate_key_pair()
    (keys / "private.pem").write_bytes(private_pem)
    (keys / "public.pem").write_bytes(public_pem)
    return keys


def make_app(url: str, keys: Path):
    return wsgi.create_app(config(url, Path(keys)), instance_path=str(Path(keys) / "instance"))


def fresh_database(server_url: str) -> str:
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"licenses_bench_{uuid.uuid4().hex[:10]}"
    with engine.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    engine.dispose()
    return sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, url: str) -> None:
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(
            sa.text(f'drop database if exists "{sa.make_url(url).database}" with (force)')
        )
    engine.dispose()


def license_text(keys: Path, seat_count: int) -> str:
    """A license for any host, signed with the scratch vendor key: ``seat_count`` intranet
    seats, none in the other pools."""
    fields = {
        "Registered-To": "Bench",
        "Host-Name": "*",
        "Issued": "2026-01-01",
        "Expires": "Never",
        "MAX_USERS": str(seat_count),
    }
    return sign_text(fields, load_private_key(Path(keys) / "private.pem"))


def prepare(url: str, keys: Path, seat_count: int) -> None:
    """The demo's schema and administrator (init-db), a Responsible person, the license."""
    app = make_app(url, keys)
    assert app.test_cli_runner().invoke(args=["init-db"]).exit_code == 0
    with app.app_context():
        text = license_text(keys, seat_count)
        licensing.install(wsgi.db.session, text, actor="bench", now=utcnow(), path="bench")
        wsgi.db.session.commit()
        wsgi.dispose_engines()


def attempt(session, username: str) -> bool:
    """One attempt through the seat service, as a request would make it; True if admitted."""
    try:
        seats.add_person(
            session,
            username=username,
            first_name="Bench",
            surname="Mark",
            email="",
            actor="bench",
            now=utcnow(),
            path="bench",
        )
        session.commit()
        return True
    except seats.SeatLimitExceeded:
        session.commit()  # the refusal's audit row (and the episode, once)
        return False


def _count_round_trips(engine) -> list[int]:
    """[statements] counted by a before_cursor_execute listener, plus BEGIN and COMMIT."""
    counted = [0]

    def one(*_args, **_kwargs):
        counted[0] += 1

    sa.event.listen(engine, "before_cursor_execute", one)
    sa.event.listen(engine, "begin", one)
    sa.event.listen(engine, "commit", one)
    return counted


def _ours(url, keys, worker, count, _seats, barrier, results):
    app = make_app(url, keys)
    admitted = 0
    with app.app_context():
        session = wsgi.db.session
        session.execute(sa.select(1))  # connected before the start, as the bare loop is
        session.commit()
        counted = _count_round_trips(wsgi.db.engine)
        counted[0] = 0
        barrier.wait(timeout=300)
        started = last_admission = time.time()
        for n in range(count):
            if attempt(session, f"o{worker}_{n}"):
                admitted += 1
                last_admission = time.time()
        finished = time.time()
        wsgi.dispose_engines()
    results.put((admitted, started, finished, counted[0], last_admission))


_AUDIT_ROW = (
    "insert into licenses_audit (at, actor, action, path, subject, pool, outcome, detail) "
    "values (now(), 'bench', 'add', 'bench', %s, 'intranet', %s, %s)"
)


def _bare(url, keys, worker, count, seat_count, barrier, results):
    """The same rows written with psycopg: conditional UPDATE, then the two inserts."""
    _bare_loop(url, keys, worker, count, seat_count, barrier, results, audited=False)


def _bare_audited(url, keys, worker, count, seat_count, barrier, results):
    """The bare loop plus one audit row per attempt, admitted or refused (rule 11): the
    least that any implementation keeping the product's rules writes."""
    _bare_loop(url, keys, worker, count, seat_count, barrier, results, audited=True)


def bare_attempt(conn, name: str, seat_count: int, *, audited: bool = False) -> tuple[bool, int]:
    """One attempt of the bare loop on a psycopg connection: (admitted, round trips)."""
    with conn.transaction():  # BEGIN ... COMMIT
        round_trips = 3
        cur = conn.execute(
            "update licenses_seat_counter set used = used + 1 "
            "where pool = 'intranet' and used + 1 <= %s",
            (seat_count,),
        )
        if cur.rowcount != 1:
            if audited:
                conn.execute(_AUDIT_ROW, (name, "refused", "The intranet pool is full."))
                round_trips += 1
            return False, round_trips
        if audited:
            conn.execute(_AUDIT_ROW, (name, "ok", ""))
            round_trips += 1
        user_id = conn.execute(
            "insert into users (username, first_name, surname, email, active, "
            "is_sysadmin, is_people_admin, created_at) "
            "values (%s, 'Bench', 'Mark', '', true, false, false, now()) returning id",
            (name,),
        ).fetchone()[0]
        conn.execute(
            "insert into licenses_profile (user_id, area, readonly, pool, seat_pool, "
            "exempt, source, created_at, username_key, first_name_key, surname_key, "
            "email_key) values (%s, 'primary', false, 'intranet', 'intranet', false, "
            "'host', now(), %s, 'bench', 'mark', '')",
            (user_id, name),
        )
        return True, round_trips + 2


def _bare_loop(url, _keys, worker, count, seat_count, barrier, results, *, audited):
    dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    admitted = 0
    round_trips = 0
    with psycopg.connect(dsn) as conn:
        barrier.wait(timeout=300)
        started = last_admission = time.time()
        for n in range(count):
            ok, trips = bare_attempt(conn, f"b{worker}_{n}", seat_count, audited=audited)
            round_trips += trips
            if ok:
                admitted += 1
                last_admission = time.time()
        finished = time.time()
    results.put((admitted, started, finished, round_trips, last_admission))


def _race(worker_fn, url, keys, processes, attempts, seat_count):
    """Start the workers, release them together; (admitted, attempts/s, round trips each)."""
    context = multiprocessing.get_context("spawn")
    share = attempts // processes
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(
            target=worker_fn, args=(url, str(keys), w, share, seat_count, barrier, results)
        )
        for w in range(processes)
    ]
    for process in workers:
        process.start()
    done = [results.get(timeout=1800) for _ in workers]
    for process in workers:
        process.join(timeout=60)
        if process.exitcode != 0:
            raise SystemExit(f"a {worker_fn.__name__} worker failed (exit {process.exitcode})")
    start = min(d[1] for d in done)
    elapsed = max(d[2] for d in done) - start
    filling = max(d[4] for d in done) - start  # until the last seat was taken
    total = share * processes
    return (
        sum(d[0] for d in done),
        total / elapsed,
        sum(d[3] for d in done) / total,
        filling,
        elapsed,
    )


def _over_allocations(url: str, seat_count: int) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        active = conn.execute(
            sa.text("select count(*) from users where active and username <> 'admin'")
        ).scalar_one()
        counter = conn.execute(
            sa.text("select used from licenses_seat_counter where pool = 'intranet'")
        ).scalar_one()
    engine.dispose()
    return max(active - seat_count, counter - seat_count, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--seats", type=int, default=1000)
    parser.add_argument("--attempts", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    server = options.url.replace("postgresql://", "postgresql+psycopg://", 1)
    keys = vendor_keys("admission-bench-")

    names = ("bare", "audited", "ours")
    rates = {name: [] for name in names}
    over = {name: [] for name in names}
    trips = {name: [] for name in names}
    ratios = []
    floor_ratios = []
    for run in range(options.runs):
        print(f"run {run + 1}: load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for name, worker_fn in (("bare", _bare), ("audited", _bare_audited), ("ours", _ours)):
            url = fresh_database(server)
            try:
                prepare(url, keys, options.seats)
                admitted, rate, per_attempt, filling, elapsed = _race(
                    worker_fn, url, keys, options.processes, options.attempts, options.seats
                )
                over[name].append(_over_allocations(url, options.seats))
                rates[name].append(rate)
                trips[name].append(per_attempt)
                print(
                    f"run {run + 1} {name:7}: {rate:8.0f} attempts/s, admitted {admitted}, "
                    f"{per_attempt:.2f} round trips per attempt, "
                    f"{elapsed:.1f} s ({filling:.1f} s until the last seat was taken), "
                    f"over-allocations {over[name][-1]}",
                    flush=True,
                )
            finally:
                drop_database(server, url)
        ratios.append(rates["ours"][-1] / rates["bare"][-1])
        floor_ratios.append(rates["audited"][-1] / rates["bare"][-1])
        print(
            f"run {run + 1}: ratio {ratios[-1]:.2f} (audited loop {floor_ratios[-1]:.2f}); load "
            "average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            flush=True,
        )
    ours, bare = statistics.median(rates["ours"]), statistics.median(rates["bare"])
    audited = statistics.median(rates["audited"])
    print()
    print(
        f"PostgreSQL, {options.processes} processes, {options.seats} seats, "
        f"{options.attempts} attempts, median of {options.runs} runs:"
    )
    print(
        f"  ours (seats.add_person, ORM, audit): {ours:8.0f} attempts/s, "
        f"{statistics.median(trips['ours']):.2f} round trips per attempt"
    )
    print(
        f"  bare (conditional UPDATE + inserts): {bare:8.0f} attempts/s, "
        f"{statistics.median(trips['bare']):.2f} round trips per attempt"
    )
    print(
        f"  bare + one audit row per attempt:    {audited:8.0f} attempts/s, "
        f"{statistics.median(trips['audited']):.2f} round trips per attempt"
    )
    print(
        f"  ratio ours/bare: {ours / bare:.2f} (of medians); per run "
        f"{', '.join(f'{r:.2f}' for r in ratios)}, median {statistics.median(ratios):.2f}"
    )
    print(
        f"  ratio audited/bare: {audited / bare:.2f} (per run "
        f"{', '.join(f'{r:.2f}' for r in floor_ratios)}); ours/audited: {ours / audited:.2f}"
    )
    print(
        "  over-allocations: "
        + ", ".join(f"{name} {max(over[name])}" for name in names)
        + " (must be 0)"
    )


if __name__ == "__main__":
    main()

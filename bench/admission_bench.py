"""Seat admission under contention: 8 processes race on PostgreSQL for 1,000 seats.

Compares the extension's real path (``seats.add_person`` through the demo app, ORM, safety
net, audit) with a bare loop of the same inserts guarded by a conditional UPDATE of a counter
row (psycopg, no ORM), measured in the same run. Prints attempts per second for both, their
ratio and the over-allocations (which must be 0). Not a test; not run by ``make test``.

    .venv/bin/python bench/admission_bench.py [--url postgresql://postgres@127.0.0.1/test]
        [--processes 8] [--seats 1000] [--attempts 4000] [--runs 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
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


def _config(url: str, keys: Path) -> dict:
    return {
        "SQLALCHEMY_DATABASE_URI": url,
        "SECRET_KEY": "bench",
        "LICENSES_PUBLIC_KEYS": [str(keys / "public.pem")],
        "LICENSES_SITE_NAME": "bench.example.com",
        "DEMO_PASSWORD_METHOD": "pbkdf2:sha256:1000",
    }


def _fresh_database(server_url: str) -> str:
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"licenses_bench_{uuid.uuid4().hex[:10]}"
    with engine.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    engine.dispose()
    return sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)


def _drop_database(server_url: str, url: str) -> None:
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(
            sa.text(f'drop database if exists "{sa.make_url(url).database}" with (force)')
        )
    engine.dispose()


def _prepare(url: str, keys: Path, seat_count: int) -> None:
    app = wsgi.create_app(_config(url, keys), instance_path=str(keys / "instance"))
    assert app.test_cli_runner().invoke(args=["init-db"]).exit_code == 0
    with app.app_context():
        fields = {
            "Registered-To": "Bench",
            "Host-Name": "*",
            "Issued": "2026-01-01",
            "Expires": "Never",
            "MAX_USERS": str(seat_count),
        }
        text = sign_text(fields, load_private_key(keys / "private.pem"))
        licensing.install(wsgi.db.session, text, actor="bench", now=utcnow(), path="bench")
        wsgi.db.session.commit()
        wsgi.db.engine.dispose()


def _ours(args):
    url, keys, worker, count, start_at = args
    app = wsgi.create_app(_config(url, Path(keys)), instance_path=str(Path(keys) / "instance"))
    admitted = 0
    with app.app_context():
        session = wsgi.db.session
        while time.time() < start_at:
            time.sleep(0.001)
        for attempt in range(count):
            try:
                seats.add_person(
                    session,
                    username=f"o{worker}_{attempt}",
                    first_name="Bench",
                    surname="Mark",
                    email="",
                    actor="bench",
                    now=utcnow(),
                    path="bench",
                )
                session.commit()
                admitted += 1
            except seats.SeatLimitExceeded:
                session.commit()
        wsgi.db.engine.dispose()
    return admitted


def _bare(args):
    """The same rows written with psycopg: conditional UPDATE, then the two inserts."""
    url, _keys, worker, count, start_at = args
    dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    admitted = 0
    with psycopg.connect(dsn) as conn:
        while time.time() < start_at:
            time.sleep(0.001)
        for attempt in range(count):
            with conn.transaction():
                cur = conn.execute(
                    "update licenses_seat_counter set used = used + 1 "
                    "where pool = 'intranet' and used + 1 <= %s",
                    (SEATS,),
                )
                if cur.rowcount != 1:
                    continue
                name = f"b{worker}_{attempt}"
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
                admitted += 1
    return admitted


def _race(worker_fn, url, keys, processes, attempts):
    context = multiprocessing.get_context("spawn")
    share = attempts // processes
    with context.Pool(processes) as pool:
        start_at = time.time() + 3  # let every process import and connect first
        jobs = [(url, str(keys), w, share, start_at) for w in range(processes)]
        pending = pool.map_async(worker_fn, jobs)
        results = pending.get(timeout=1800)
        elapsed = time.time() - start_at
    return sum(results), share * processes / elapsed


def _over_allocations(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        active = conn.execute(
            sa.text("select count(*) from users where active and username <> 'admin'")
        ).scalar_one()
        counter = conn.execute(
            sa.text("select used from licenses_seat_counter where pool = 'intranet'")
        ).scalar_one()
    engine.dispose()
    return max(active - SEATS, counter - SEATS, 0)


SEATS = 1000


def main() -> None:
    global SEATS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--seats", type=int, default=1000)
    parser.add_argument("--attempts", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    SEATS = options.seats
    server = options.url.replace("postgresql://", "postgresql+psycopg://", 1)
    keys = Path(tempfile.mkdtemp(prefix="admission-bench-"))
    private_pem, public_pem = generate_key_pair()
    (keys / "private.pem").write_bytes(private_pem)
    (keys / "public.pem").write_bytes(public_pem)

    rates = {"ours": [], "bare": []}
    over = {"ours": [], "bare": []}
    for run in range(options.runs):
        for name, worker_fn in (("bare", _bare), ("ours", _ours)):
            url = _fresh_database(server)
            try:
                _prepare(url, keys, options.seats)
                admitted, rate = _race(worker_fn, url, keys, options.processes, options.attempts)
                over[name].append(_over_allocations(url))
                rates[name].append(rate)
                print(
                    f"run {run + 1} {name:4}: {rate:8.0f} attempts/s, admitted {admitted}, "
                    f"over-allocations {over[name][-1]}",
                    flush=True,
                )
            finally:
                _drop_database(server, url)
    ours, bare = statistics.median(rates["ours"]), statistics.median(rates["bare"])
    print()
    print(
        f"PostgreSQL, {options.processes} processes, {options.seats} seats, "
        f"{options.attempts} attempts, median of {options.runs} runs:"
    )
    print(f"  ours (seats.add_person, ORM, audit): {ours:8.0f} attempts/s")
    print(f"  bare (conditional UPDATE + inserts): {bare:8.0f} attempts/s")
    print(f"  ratio ours/bare: {ours / bare:.2f}")
    print(f"  over-allocations: ours {max(over['ours'])}, bare {max(over['bare'])} (must be 0)")


if __name__ == "__main__":
    main()

"""One worker's admission loop in a single process on PostgreSQL: statements, CPU, a profile.

Counts the SQL statements (each one a round trip; BEGIN and COMMIT counted apart) of every
admitted and every refused attempt with a ``before_cursor_execute`` listener, measures the
CPU of each attempt (this process's ``time.process_time`` and the PostgreSQL backend's from
``/proc/PID/schedstat``, in nanoseconds) for ours and for the bare loop, then profiles our
loop with cProfile, counting CPU time rather than wall time. Not a test; not run by
``make test``.

    .venv/bin/python bench/admission_profile.py [--url postgresql://postgres@127.0.0.1/test]
        [--seats 250] [--attempts 1000] [--profile FILE] [--show-sql] [--floor]

``--floor`` also times a refused attempt's two statements and its COMMIT without the seat
service around them, three ways: through the session and Core (as the service runs them),
through the session on its DBAPI connection, and psycopg alone.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import admission_bench as bench  # noqa: E402

import wsgi  # noqa: E402
from intranet_licenses import audit, seats  # noqa: E402
from intranet_licenses.models import utcnow  # noqa: E402


def _loop(session, prefix: str, count: int, on_attempt=None) -> int:
    admitted = 0
    for attempt in range(count):
        ok = bench.attempt(session, f"{prefix}{attempt}")
        admitted += ok
        if on_attempt is not None:
            on_attempt(ok)
    return admitted


class _Cpu:
    """CPU of admitted and refused attempts: this process's and its PostgreSQL backend's."""

    def __init__(self, backend_pid: int):
        self.schedstat = Path(f"/proc/{backend_pid}/schedstat")
        self.spent = {True: [0, 0.0, 0.0], False: [0, 0.0, 0.0]}  # [n, Python s, backend s]

    def _backend(self) -> float:
        return int(self.schedstat.read_text().split()[0]) / 1e9

    def measure(self, one_attempt) -> bool:
        backend = self._backend()
        python = time.process_time()
        ok = one_attempt()
        python = time.process_time() - python
        spent = self.spent[ok]
        spent[0] += 1
        spent[1] += python
        spent[2] += self._backend() - backend
        return ok

    def report(self, label: str) -> None:
        for ok, outcome in ((True, "admitted"), (False, "refused")):
            n, python, backend = self.spent[ok]
            if n:
                print(
                    f"CPU {label:4} {outcome:8}: {n:5} attempts, Python {python / n * 1e3:.3f} ms"
                    f" + PostgreSQL {backend / n * 1e3:.3f} ms each"
                )


def _bare_attempt(conn, name: str, seat_count: int) -> bool:
    """The bare loop's attempt (bench/admission_bench.py's, once); True if admitted."""
    return bench.bare_attempt(conn, name, seat_count)[0]


def _floor(session, attempts: int) -> None:
    """CPU of a refusal's statements alone (the pool must be full): see the module docstring."""
    dialect = session.get_bind().dialect
    row = audit._row(utcnow(), "bench", "add", "bench", "refused", "x", "intranet", "No seat.")
    read = seats._READ_POOL_AND_USERNAME
    compiled = read.compile(dialect=dialect)
    read_sql = str(compiled)
    insert_sql = str(audit._INSERT.compile(dialect=dialect, column_keys=list(row)))

    def read_params(n):
        return {"pool": "intranet", "key": f"floor{n}"}

    def core(n):
        conn = session.connection()
        conn.execute(read, read_params(n)).all()
        conn.execute(audit._INSERT, row)
        session.commit()

    def dbapi(n):
        raw = session.connection().connection.driver_connection
        raw.execute(read_sql, compiled.construct_params(read_params(n))).fetchall()
        raw.execute(insert_sql, row)
        session.commit()

    raw = session.connection().connection.driver_connection
    session.commit()

    def alone(n):
        with raw.transaction():
            raw.execute(read_sql, compiled.construct_params(read_params(n))).fetchall()
            raw.execute(insert_sql, row)

    for label, one in (("session + Core", core), ("session, DBAPI", dbapi), ("psycopg", alone)):
        python = time.process_time()
        for n in range(attempts):
            one(n)
        python = (time.process_time() - python) / attempts
        print(f"floor of a refusal, {label:14}: Python {python * 1e3:.3f} ms")


def _again(server: str, url: str, keys, seat_count: int) -> str:
    """Drop the database at ``url``; a fresh one, prepared as the race's (its URL)."""
    bench.drop_database(server, url)
    url = bench.fresh_database(server)
    bench.prepare(url, keys, seat_count)
    return url


def _bare_cpu(url: str, seats: int, attempts: int) -> None:
    dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn:
        cpu = _Cpu(conn.info.backend_pid)
        for n in range(attempts):
            cpu.measure(lambda n=n: _bare_attempt(conn, f"b{n}", seats))
    cpu.report("bare")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--seats", type=int, default=250)
    parser.add_argument("--attempts", type=int, default=1000)
    parser.add_argument("--profile", help="write the cProfile statistics to this file")
    parser.add_argument("--show-sql", action="store_true", help="print one attempt's statements")
    parser.add_argument("--floor", action="store_true", help="time a refusal's statements alone")
    options = parser.parse_args()
    server = options.url.replace("postgresql://", "postgresql+psycopg://", 1)
    keys = bench.vendor_keys("admission-profile-")

    url = bench.fresh_database(server)
    try:
        bench.prepare(url, keys, options.seats)
        app = bench.make_app(url, keys)
        with app.app_context():
            session = wsgi.db.session
            engine = wsgi.db.engine
            statements: list[str] = []

            def count(conn, cursor, statement, parameters, context, executemany):
                statements.append(statement)

            def on_begin(conn):
                statements.append("BEGIN (implicit)")

            def on_commit(conn):
                statements.append("COMMIT")

            sa.event.listen(engine, "before_cursor_execute", count)
            sa.event.listen(engine, "begin", on_begin)
            sa.event.listen(engine, "commit", on_commit)
            per = {True: Counter(), False: Counter()}
            shown = {True: False, False: False}
            mark = [0]

            def on_attempt(ok):
                mine = statements[mark[0] :]
                mark[0] = len(statements)
                per[ok]["attempts"] += 1
                per[ok]["statements"] += len(mine)
                if options.show_sql and not shown[ok] and per[ok]["attempts"] == 3:
                    shown[ok] = True
                    print(f"--- one {'admitted' if ok else 'refused'} attempt:")
                    for s in mine:
                        print("   ", " ".join(s.split())[:160])

            # Warm up (first statements compile, first license read) outside the counts.
            bench.attempt(session, "warm")
            mark[0] = len(statements)
            start = time.perf_counter()
            admitted = _loop(session, "s", options.attempts, on_attempt)
            elapsed = time.perf_counter() - start
            for ok, label in ((True, "admitted"), (False, "refused")):
                n = per[ok]["attempts"]
                if n:
                    print(
                        f"{label:8}: {n:5} attempts, {per[ok]['statements'] / n:.2f} "
                        "round trips each (statements incl. BEGIN/COMMIT)"
                    )
            print(
                f"{options.attempts} attempts in {elapsed:.2f} s: "
                f"{options.attempts / elapsed:.0f}/s, admitted {admitted + 1}"
            )
            sa.event.remove(engine, "before_cursor_execute", count)
            sa.event.remove(engine, "begin", on_begin)
            sa.event.remove(engine, "commit", on_commit)
            engine.dispose()

        # The same loop again, CPU per attempt (no statement listeners), on a fresh database.
        url = _again(server, url, keys, options.seats)
        app = bench.make_app(url, keys)
        with app.app_context():
            session = wsgi.db.session
            bench.attempt(session, "warm")
            backend_pid = session.execute(sa.text("select pg_backend_pid()")).scalar_one()
            session.commit()
            cpu = _Cpu(backend_pid)
            for attempt in range(options.attempts):
                cpu.measure(lambda attempt=attempt: bench.attempt(session, f"c{attempt}"))
            cpu.report("ours")
            if options.floor:
                _floor(session, options.attempts)
            wsgi.dispose_engines()
        url = _again(server, url, keys, options.seats)
        _bare_cpu(url, options.seats, options.attempts)

        # The same loop again, profiled, on a fresh database.
        url = _again(server, url, keys, options.seats)
        app = bench.make_app(url, keys)
        with app.app_context():
            session = wsgi.db.session
            bench.attempt(session, "warm")
            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
            _loop(session, "p", options.attempts)
            profiler.disable()
            wsgi.dispose_engines()
        stats = pstats.Stats(profiler)
        if options.profile:
            stats.dump_stats(options.profile)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(25)
    finally:
        bench.drop_database(server, url)


if __name__ == "__main__":
    main()

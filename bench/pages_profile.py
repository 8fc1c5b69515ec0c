"""Where a page's CPU goes: the pages of ``pages_bench.py`` in-process, timed and profiled.

Not a test and not run by ``make test``. Run from the project folder:

    .venv/bin/python bench/pages_profile.py [--size 100000] [--folder DIR] [--requests 200]
        [--url postgresql+psycopg://postgres@127.0.0.1:5432/licenses_bench_pages]
        [--profile PATH ...] [--top 25]

It builds (or reuses) the benchmark database of ``--size`` profiles in ``--folder``
(``bench/profiles.py``), or uses ``--url``, a database ``pages_bench.py --postgres`` built
(pass that run's ``--folder`` too, for its instance folder). It makes the demo app on it
(CSRF on, as in production), signs the Flask test client in as the administrator (the
session's user id), and for each page prints the median and the least time of one request
over ``--requests`` requests, in CPU time of this thread (with the SQL statements per request,
and on PostgreSQL the server backend's CPU per request): other jobs on the machine change
wall-clock times a lot and CPU time much less, and the least is the least disturbed (the
server's CPU is a mean over the requests). ``--profile PATH`` (repeatable, e.g.
``/hello`` or ``/admin/licenses/people``) also prints the ``--top`` functions by own and
cumulative time (cProfile) for those pages. No server, no network: a page's own Python.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pages_bench import pages  # noqa: E402
from profiles import ROOT, build_sqlite, ensure_license  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--folder", default=None, help="Scratch folder (default: a new one)")
    parser.add_argument(
        "--url", help="An existing benchmark database instead (e.g. pages_bench's PostgreSQL one)"
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--profile", action="append", default=[], help="A page to profile")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="pages-profile-"))
    folder.mkdir(parents=True, exist_ok=True)
    url = args.url or f"sqlite:///{build_sqlite(folder, args.size)}"
    ensure_license(url, folder / "instance")
    sys.path.insert(0, str(ROOT))
    import wsgi

    app = wsgi.create_app({"SQLALCHEMY_DATABASE_URI": url}, instance_path=str(folder / "instance"))
    client = app.test_client()
    with client.session_transaction() as session:
        session["user_id"] = 1  # the administrator account
    engines = _engines(app)
    statements = _count_statements(engines)
    backend = _backend_cpu(app, engines)
    base = None
    for _, path, expected in pages(args.size):
        response = client.get(path)
        assert response.status_code == 200 and expected in response.text, path
        for _ in range(20):  # warm up: templates compiled, statements cached
            client.get(path)
        times = []
        statements[0] = 0
        server = backend()
        for _ in range(args.requests):
            began = time.thread_time()
            client.get(path)
            times.append(time.thread_time() - began)
        server = (backend() - server) / args.requests
        median, least = statistics.median(times), min(times)
        base = base or (median, least)  # the first page is the trivial one
        print(
            f"{path:<42} CPU median {median * 1000:6.2f} ms ({median / base[0]:4.1f} x /hello),"
            f" least {least * 1000:6.2f} ms ({least / base[1]:4.1f} x),"
            f" {statements[0] / args.requests:.0f} statements"
            + (f", server {server * 1000:.2f} ms" if server else ""),
            flush=True,
        )
    for path in args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.requests):
            client.get(path)
        profiler.disable()
        for order in ("tottime", "cumulative"):
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(args.top)
            print(f"\n== {path}, {args.requests} requests, by {order}\n{out.getvalue()}")


def _engines(app) -> list:
    """The app's engines: its own, and on PostgreSQL the pages' read bind (``reads.py``)."""
    with app.app_context():
        return list(app.extensions["sqlalchemy"].engines.values())


def _count_statements(engines) -> list[int]:
    """[statements run], counted by a before_cursor_execute listener on each engine."""
    counted = [0]

    def one(*_args, **_kwargs):
        counted[0] += 1

    for engine in engines:
        sqlalchemy.event.listen(engine, "before_cursor_execute", one)
    return counted


def _backend_cpu(app, engines):
    """A function giving the CPU seconds so far of the PostgreSQL backends serving the app
    (the test client's requests run one at a time, on one pooled connection per engine); 0
    on SQLite."""
    if engines[0].dialect.name != "postgresql":
        return lambda: 0.0
    schedstats = []
    with app.app_context():
        for engine in engines:
            with engine.connect() as conn:
                pid = conn.execute(sqlalchemy.text("select pg_backend_pid()")).scalar_one()
            schedstats.append(Path(f"/proc/{pid}/schedstat"))
    return lambda: sum(int(path.read_text().split()[0]) for path in schedstats) / 1e9


if __name__ == "__main__":
    main()

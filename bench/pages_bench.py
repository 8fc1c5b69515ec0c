"""Benchmark: the License, summary and People pages at 1,000,000 profiles vs a trivial page.

Not a test and not run by ``make test``. Prerequisites: Debian's ``wrk`` (``apt-get install
wrk``), the load generator, and gunicorn (the ``server`` extra). Run from the project folder:

    .venv/bin/python bench/pages_bench.py [--size 1000000] [--runs 3] [--seconds 5]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres] [--folder DIR] [--keep]

It builds the demo database once (``bench/profiles.py``; SQLite in a scratch folder, or with
``--postgres`` a database ``licenses_bench_pages`` created on that server), serves the demo
with gunicorn (2 workers, gthread, 4 threads each) on loopback, logs in as the administrator
through the login form, checks each page once, then, in turns, lets ``wrk`` (1 thread,
16 keep-alive connections, 8 held by each worker, ``--seconds`` each) load the trivial page
and then a page, for each page. The baseline is ``/hello``: a page of the same app behind
the same login and layout that asks the database nothing but who is signed in. It prints
requests/s and median latency (medians over the runs) and each page's ratio to the trivial
page: the median of the ratios of the pairs, each measured within seconds (the trivial
page's own rate, on the machines here, drifted by a third within one run). Goal (issue 11):
every page >= 0.5.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
from profiles import ROOT, build_postgres, build_sqlite, ensure_license  # noqa: E402


def pages(size: int) -> list[tuple[str, str, str]]:
    """(label, path, text the page must show) for a database of ``size`` profiles."""
    rare = f"user{size - 10:07d}"[:-1]  # the last 10 people, at the far end of the ids
    return [
        ("trivial page", "/hello", "Hello, Intranet"),
        ("License", "/admin/licenses/", "License is valid"),
        ("Summary", "/admin/licenses/summary", "Number of Users"),
        ("People, first page", "/admin/licenses/people", "user0000002"),
        ("People, q=an", "/admin/licenses/people?q=an", "Anna"),
        (f"People, q={rare} (last 10)", f"/admin/licenses/people?q={rare}",
         f"user{size - 1:07d}"),
        ("People, q=zq (no match)", "/admin/licenses/people?q=zq", "People"),
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int) -> None:
    """Until the server on ``port`` accepts connections (at most 20 s)."""
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)


def log_in(port: int) -> str:
    """The session cookie of the administrator, logged in through the login form."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/login")
    response = conn.getresponse()
    page = response.read().decode()
    cookie = response.getheader("Set-Cookie").split(";")[0]
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    token = token or re.search(
        r'id="csrf_token" name="csrf_token" type="hidden" value="([^"]+)"', page
    )
    body = urllib.parse.urlencode(
        {"csrf_token": token.group(1), "username": "admin", "password": "demo-password"}
    )
    conn.request("POST", "/login", body, {
        "Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    response = conn.getresponse()
    response.read()
    assert response.status == 302, f"login failed: {response.status}"
    cookie = response.getheader("Set-Cookie").split(";")[0]
    # The first page with a form puts a CSRF token in the session, and a browser sends the
    # cookie it was given from then on. Without it every view of such a page would make a
    # new token and sign a new cookie (the trivial page has no form, so it never did).
    conn.request("GET", "/admin/licenses/", headers={"Cookie": cookie})
    response = conn.getresponse()
    response.read()
    assert response.status == 200, f"the License page after the login: {response.status}"
    cookie = (response.getheader("Set-Cookie") or cookie).split(";")[0]
    conn.close()
    return cookie


def check(port: int, cookie: str, path: str, expected: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path, headers={"Cookie": cookie})
    response = conn.getresponse()
    page = response.read().decode()
    conn.close()
    if response.status != 200 or expected not in page:
        sys.exit(f"{path}: status {response.status}, {expected!r} not on the page")
    if response.getheader("Set-Cookie"):
        sys.exit(f"{path}: sets a cookie on every view (the benchmark's cookie lacks something)")


#: wrk's connections, and each gunicorn worker's most (``--worker-connections``): with
#: 2 workers of 8, each worker holds exactly 8 of wrk's 16 keep-alive connections. Without
#: that bound one worker could accept all of them while the other idled: the kernel hands a
#: burst of connections to whichever worker wakes first, and one run in four or so measured
#: one process on one core (the trivial page at 845 requests/s instead of 2,150).
CONNECTIONS = 16
WORKER_CONNECTIONS = 8

_LATENCY = re.compile(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_SCALE = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def load(port: int, cookie: str, path: str, seconds: int) -> tuple[float, float]:
    """(requests/s, median latency in ms) from one bounded wrk run."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s", "--latency",
         "-H", f"Cookie: {cookie}", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout  # fmt: skip
    if "Non-2xx" in out or "Socket errors" in out:
        sys.exit(f"{path}: wrk saw errors:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = _LATENCY.search(out).groups()
    return rate, float(value) * _SCALE[unit]


def postgres_database(server_url: str, size: int, folder: Path) -> str:
    """The SQLAlchemy URL of a database ``licenses_bench_pages`` holding ``size`` profiles."""
    import psycopg

    name = "licenses_bench_pages"
    parts = urllib.parse.urlsplit(server_url)
    url = urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if exists:
        with psycopg.connect(url) as conn:
            found = conn.execute("SELECT count(*) FROM licenses_profile").fetchone()[0]
        if found == size:
            return url.replace("postgresql://", "postgresql+psycopg://", 1)
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name}")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    sa_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    build_postgres(sa_url, size, folder / "instance")
    return sa_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--postgres", help="A PostgreSQL server URL (default: SQLite)")
    parser.add_argument("--folder", default=None, help="Scratch folder (default: a new one)")
    parser.add_argument("--keep", action="store_true", help="Keep the scratch folder")
    args = parser.parse_args()
    for program in ("wrk",):
        if shutil.which(program) is None:
            sys.exit(f"This benchmark needs {program}: apt-get install {program}.")
    folder = Path(args.folder or tempfile.mkdtemp(prefix="pages-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    if args.postgres:
        url = postgres_database(args.postgres, args.size, folder)
        database = "PostgreSQL"
    else:
        url = f"sqlite:///{build_sqlite(folder, args.size)}"
        database = "SQLite"
    ensure_license(url, folder / "instance")
    print(f"{machine.line()} · {database} · {args.size:,} profiles "
          f"(ready in {time.perf_counter() - began:.0f} s) · medians of {args.runs} runs "
          f"of {args.seconds} s · wrk 1 thread, {CONNECTIONS} connections",
          flush=True)  # fmt: skip
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "--worker-class", "gthread",
         "--workers", "2", "--threads", "4", "--worker-connections", str(WORKER_CONNECTIONS),
         "--bind", f"127.0.0.1:{port}",
         "--log-level", "warning", "--graceful-timeout", "5",
         f"wsgi:create_app(instance_path={str(folder / 'instance')!r})"],
        cwd=ROOT, env=env, start_new_session=True,
    )  # fmt: skip
    PAGES = pages(args.size)  # noqa: N806
    results: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in PAGES}
    ratios: dict[str, list[float]] = {label: [] for label, _, _ in PAGES[1:]}
    loads = []
    try:
        wait_for(port)
        cookie = log_in(port)
        for _, path, expected in PAGES:
            check(port, cookie, path, expected)
            load(port, cookie, path, 1)  # warm up each worker's caches
        trivial = PAGES[0][1]
        for _ in range(args.runs):
            for label, path, _ in PAGES[1:]:
                # The trivial page just before each page: the ratio of the pair is measured
                # within seconds, so the machine's drift in a run (neighbours, the kernel's
                # memory scans) changes both alike.
                base = load(port, cookie, trivial, args.seconds)
                results[PAGES[0][0]].append(base)
                results[label].append(load(port, cookie, path, args.seconds))
                ratios[label].append(results[label][-1][0] / base[0])
            loads.append(machine.load())
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        if not args.keep and not args.folder:
            shutil.rmtree(folder, ignore_errors=True)
    worst = None
    for label, _, _ in PAGES:
        rate = statistics.median(r for r, _ in results[label])
        latency = statistics.median(ms for _, ms in results[label])
        ratio = statistics.median(ratios[label]) if label in ratios else 1.0
        worst = ratio if worst is None else min(worst, ratio)
        print(f"{label:<38} {rate:>8,.0f} requests/s  median {latency:>7.2f} ms  "
              f"ratio {ratio:.2f}", flush=True)  # fmt: skip
    print(f"load average after each run: {' | '.join(loads)}")
    print(f"goal: every page >= 0.50 of the trivial page (worst {worst:.2f})")


if __name__ == "__main__":
    main()

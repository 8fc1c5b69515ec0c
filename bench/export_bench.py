"""Benchmark: the People export against sqlite3's own CSV output, at 1,000,000 and 10,000.

Not a test and not run by ``make test``. Prerequisite: Debian's ``sqlite3`` command-line
program (``apt-get install sqlite3``). Run from the project folder:

    .venv/bin/python bench/export_bench.py [--sizes 10000,1000000] [--runs 5] [--keep]

It builds each database once in a scratch folder under /tmp (``bench/profiles.py``: bulk
inserts straight into the demo's ``users`` table and ``licenses_profile``), then, in the
same run, times

* ours: ``export.stream`` with every optional column, written to a file, in a fresh Python
  process that also reports its peak resident memory (VmHWM of that process, so the
  interpreter, Flask and SQLAlchemy are included);
* sqlite3: ``sqlite3 -csv DB "SELECT <the same columns> ... ORDER BY id" > file``, the speed
  limit for turning these rows into CSV on this machine.

It prints rows per second for both (medians over the runs), their ratio and our peak memory.
Goal (issue 7): at 1,000,000 profiles ours >= 0.35 of sqlite3's rows/s, peak memory under
150 MB and within 20 MB of the 10,000-profile run.

With ``--postgres URL`` (a server URL, e.g. postgresql://postgres@127.0.0.1:5432/postgres)
it builds a database ``licenses_bench_export_<size>`` on that server by COPY (kept and reused
by the next run), times ours there (the COPY path of export.py) against
``psql -c "\\copy (<the same columns>) to FILE csv"``. Goal (issue 11): ratio >= 0.7.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
from profiles import BASELINE_SQL, build_postgres, build_sqlite  # noqa: E402


def build(folder: Path, size: int) -> Path:
    """A demo database with ``size`` profiles (the administrator account is one of them)."""
    return build_sqlite(folder, size)


def child(db: str, out: str) -> None:
    """Run in a fresh process: one export to ``out``; print seconds, rows and peak RSS."""
    sys.path.insert(0, str(ROOT))
    import wsgi
    from intranet_licenses import export

    folder = tempfile.mkdtemp(prefix="export-bench-instance-")
    url = db if "://" in db else f"sqlite:///{db}"
    app = wsgi.create_app({"SQLALCHEMY_DATABASE_URI": url}, instance_path=folder)
    rows = 0

    def progress(n):
        nonlocal rows
        rows += n

    with app.app_context():
        opts = export.options(columns="all")
        began = time.perf_counter()
        with open(out, "wb") as file:
            for chunk in export.stream(opts, progress=progress):
                file.write(chunk)
        seconds = time.perf_counter() - began
    peak_kib = _peak_rss_kib()
    shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps({"seconds": seconds, "rows": rows, "peak_mib": peak_kib / 1024}))


def _peak_rss_kib() -> int:
    """This process's peak resident memory (VmHWM). Not ``ru_maxrss``: on Linux that keeps
    the parent's resident size at fork time across exec, so a parent that has just built a
    million rows would be counted in the child."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def ours(db: Path, out: Path) -> dict:
    completed = subprocess.run(
        [sys.executable, __file__, "--child", str(db), str(out)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def baseline(db, out: Path) -> float:
    began = time.perf_counter()
    if "://" in str(db):
        url = str(db).replace("+psycopg", "")
        copy = f"\\copy ({BASELINE_SQL}) to '{out}' csv"
        subprocess.run(["psql", "-X", "-q", url, "-c", copy], check=True)
        return time.perf_counter() - began
    with open(out, "wb") as file:
        subprocess.run(["sqlite3", "-csv", str(db), BASELINE_SQL], stdout=file, check=True)
    return time.perf_counter() - began


def build_pg(server_url: str, size: int, folder: Path) -> str:
    """A database ``licenses_bench_export_<size>`` on the server (kept and reused)."""
    import psycopg

    name = f"licenses_bench_export_{size}"
    parts = urllib.parse.urlsplit(server_url)
    url = urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
    sa_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    with psycopg.connect(server_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            with psycopg.connect(url) as check:
                found = check.execute("SELECT count(*) FROM licenses_profile").fetchone()[0]
            if found == size:
                return sa_url
            conn.execute(f"DROP DATABASE {name}")
        conn.execute(f"CREATE DATABASE {name}")
    build_postgres(sa_url, size, folder / f"instance-pg-{size}")
    return sa_url


def measure(folder: Path, size: int, runs: int, postgres: str | None = None) -> dict:
    db = build_pg(postgres, size, folder) if postgres else build(folder, size)
    out = folder / "out.csv"
    baseline(db, out)  # warm the page cache
    ours_runs, base_runs = [], []
    for _ in range(runs):
        base_runs.append(baseline(db, out))
        ours_runs.append(ours(db, out))
    rows = ours_runs[0]["rows"]
    assert rows == size, (rows, size)
    ours_rate = statistics.median(rows / r["seconds"] for r in ours_runs)
    base_rate = statistics.median(size / s for s in base_runs)
    return {
        "size": size,
        "ours": ours_rate,
        "baseline": base_rate,
        "ratio": ours_rate / base_rate,
        "peak_mib": statistics.median(r["peak_mib"] for r in ours_runs),
        "peak_mib_max": max(r["peak_mib"] for r in ours_runs),
        "csv_mib": out.stat().st_size / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--folder", default=None, help="Scratch folder (default: a new one)")
    parser.add_argument("--keep", action="store_true", help="Keep the scratch folder")
    parser.add_argument(
        "--postgres", help="A PostgreSQL server URL: measure there, against psql's \\copy"
    )
    parser.add_argument("--child", nargs=2, metavar=("DB", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    program = "psql" if args.postgres else "sqlite3"
    if shutil.which(program) is None:
        sys.exit(f"This benchmark needs the {program} program: apt-get install {program}.")
    folder = Path(args.folder or tempfile.mkdtemp(prefix="export-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    database = "PostgreSQL vs psql \\copy" if args.postgres else f"SQLite {sqlite3.sqlite_version}"
    print(f"{machine.line()} · {database} · medians of {args.runs} runs · scratch {folder}")
    results = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            result = measure(folder, size, args.runs, args.postgres)
            results.append(result)
            print(
                f"{result['size']:>9,} profiles: ours {result['ours']:>9,.0f} rows/s, "
                f"{program} {result['baseline']:>9,.0f} rows/s, ratio {result['ratio']:.2f}, "
                f"our peak RSS {result['peak_mib']:.1f} MiB (max {result['peak_mib_max']:.1f}), "
                f"CSV {result['csv_mib']:.1f} MiB",
                flush=True,
            )
            print(f"  load average {machine.load()}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if len(results) >= 2:
        small, large = min(results, key=lambda r: r["size"]), max(results, key=lambda r: r["size"])
        print(
            f"peak RSS difference {large['size']:,} vs {small['size']:,}: "
            f"{large['peak_mib'] - small['peak_mib']:+.1f} MiB; "
            f"goal: ratio >= {0.7 if args.postgres else 0.35} (got {large['ratio']:.2f}), "
            f"peak < 150 MiB (got {large['peak_mib']:.1f}), difference <= 20 MiB"
        )


if __name__ == "__main__":
    main()

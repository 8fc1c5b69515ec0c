"""Benchmark: the People export against sqlite3's own CSV output, at 1,000,000 and 10,000.

Not a test and not run by ``make test``. Prerequisite: Debian's ``sqlite3`` command-line
program (``apt-get install sqlite3``). Run from the project folder:

    .venv/bin/python bench/export_bench.py [--sizes 10000,1000000] [--runs 5] [--keep]

It builds each database once in a scratch folder under /tmp (bulk inserts straight into the
demo's ``users`` table and ``licenses_profile``), then, in the same run, times

* ours: ``export.stream`` with every optional column, written to a file, in a fresh Python
  process that also reports its peak resident memory (VmHWM of that process, so the
  interpreter, Flask and SQLAlchemy are included);
* sqlite3: ``sqlite3 -csv DB "SELECT <the same columns> ... ORDER BY id" > file``, the speed
  limit for turning these rows into CSV on this machine.

It prints rows per second for both (medians over the runs), their ratio and our peak memory.
Goal (issue 7): at 1,000,000 profiles ours >= 0.35 of sqlite3's rows/s, peak memory under
150 MB and within 20 MB of the 10,000-profile run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FIRST = ["Anna", "Björn", "Chloé", "Dmitri", "Élodie", "Farah", "Gustav", "Hana", "Ignacio",
         "Jürgen", "Kiri", "Léa", "Mateo", "Nadia", "Oskar", "Priya", "Zoë", "Ярослава",
         "美咲", "محمد", "Ana-Maria", "Jean Luc"]  # fmt: skip
LAST = ["Andersen", "O'Brien", "Dubois", "Nguyen", "Müller", "García", "Kowalski", "Rossi",
        "Yamamoto", "Novák", "Haddad", "Silva", "Ivanova", "Okafor", "Smith-Jones",
        "山田"]  # fmt: skip
#: One person in 500 has a surname that needs quoting or neutralising (real names rarely do).
AWKWARD = ["Smith, Jr.", '=HYPERLINK("x")', "-Dash", "Line\nBreak", " @mention", 'The "Boss"']

#: The columns of sqlite3's baseline: the same cells as ours, as the database stores them.
BASELINE_SQL = (
    "SELECT u.username, u.first_name, u.surname, u.id, u.active, u.email, p.area, p.pool, "
    "p.block_reason, u.created_at, u.last_login_at "
    "FROM users u JOIN licenses_profile p ON p.user_id = u.id ORDER BY u.id"
)


def build(folder: Path, size: int) -> Path:
    """A demo database with ``size`` profiles (the administrator account is one of them)."""
    path = folder / f"people-{size}.db"
    if path.exists():
        return path
    sys.path.insert(0, str(ROOT))
    import wsgi

    app = wsgi.create_app(
        {
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{path}",
            "DEMO_PASSWORD_METHOD": "pbkdf2:sha256:1",
        },
        instance_path=str(folder / "instance"),
    )
    result = app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        wsgi.db.engine.dispose()

    start = datetime(2020, 1, 1, 8, 0)
    connection = sqlite3.connect(path)
    # Load without the write-ahead log (a 400 MB WAL would be read, and counted, by the runs
    # that follow), then hand the file back in WAL mode as the demo uses it.
    connection.execute("PRAGMA journal_mode=DELETE")
    connection.execute("PRAGMA synchronous=OFF")

    def people():
        for i in range(2, size + 1):
            first, last = FIRST[i % len(FIRST)], LAST[i % len(LAST)]
            if i % 500 == 0:
                last = AWKWARD[(i // 500) % len(AWKWARD)]
            username = f"user{i:07d}"
            created = start + timedelta(minutes=7 * i)
            blocked = i % 20 == 0
            area = ("primary", "primary", "primary", "partners", "suppliers")[i % 5]
            yield (
                (i, username, first, last, f"{username}@example.com", not blocked,
                 created.isoformat(" ", "microseconds"),
                 (created + timedelta(days=3)).isoformat(" ", "microseconds")
                 if i % 2 else None),
                (i, area, i % 50 == 0, "readonly" if i % 50 == 0 else
                 ("intranet" if area == "primary" else "extranet"),
                 None if blocked else "intranet", False,
                 ("admin", "license", "directory")[i % 3] if blocked else None,
                 created.isoformat(" ", "microseconds"), username, first.lower(), last.lower(),
                 f"{username}@example.com"),
            )  # fmt: skip

    batch_users, batch_profiles = [], []
    with connection:
        for user, profile in people():
            batch_users.append(user)
            batch_profiles.append(profile)
            if len(batch_users) >= 50_000:
                _insert(connection, batch_users, batch_profiles)
                batch_users, batch_profiles = [], []
        _insert(connection, batch_users, batch_profiles)
    connection.execute("ANALYZE")
    connection.execute("PRAGMA journal_mode=WAL")
    connection.close()
    return path


def _insert(connection, users, profiles) -> None:
    connection.executemany(
        "INSERT INTO users (id, username, first_name, surname, email, active, created_at, "
        "last_login_at, is_sysadmin, is_people_admin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0)",
        users,
    )
    connection.executemany(
        "INSERT INTO licenses_profile (user_id, area, readonly, pool, seat_pool, exempt, "
        "block_reason, created_at, source, username_key, first_name_key, surname_key, "
        "email_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'host', ?, ?, ?, ?)",
        profiles,
    )


def child(db: str, out: str) -> None:
    """Run in a fresh process: one export to ``out``; print seconds, rows and peak RSS."""
    sys.path.insert(0, str(ROOT))
    import wsgi
    from intranet_licenses import export

    folder = tempfile.mkdtemp(prefix="export-bench-instance-")
    app = wsgi.create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{db}"}, instance_path=folder)
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


def baseline(db: Path, out: Path) -> float:
    began = time.perf_counter()
    with open(out, "wb") as file:
        subprocess.run(["sqlite3", "-csv", str(db), BASELINE_SQL], stdout=file, check=True)
    return time.perf_counter() - began


def measure(folder: Path, size: int, runs: int) -> dict:
    db = build(folder, size)
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
        "sqlite3": base_rate,
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
    parser.add_argument("--child", nargs=2, metavar=("DB", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if shutil.which("sqlite3") is None:
        sys.exit("This benchmark needs the sqlite3 program: apt-get install sqlite3.")
    folder = Path(args.folder or tempfile.mkdtemp(prefix="export-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"{platform.node()} · {os.cpu_count()} CPUs · Python {platform.python_version()} · "
          f"SQLite {sqlite3.sqlite_version} · {datetime.now(UTC):%Y-%m-%d %H:%M} UTC · "
          f"medians of {args.runs} runs · scratch {folder}")  # fmt: skip
    results = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            result = measure(folder, size, args.runs)
            results.append(result)
            print(
                f"{result['size']:>9,} profiles: ours {result['ours']:>9,.0f} rows/s, "
                f"sqlite3 {result['sqlite3']:>9,.0f} rows/s, ratio {result['ratio']:.2f}, "
                f"our peak RSS {result['peak_mib']:.1f} MiB (max {result['peak_mib_max']:.1f}), "
                f"CSV {result['csv_mib']:.1f} MiB",
                flush=True,
            )
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if len(results) >= 2:
        small, large = min(results, key=lambda r: r["size"]), max(results, key=lambda r: r["size"])
        print(
            f"peak RSS difference {large['size']:,} vs {small['size']:,}: "
            f"{large['peak_mib'] - small['peak_mib']:+.1f} MiB; "
            f"goal: ratio >= 0.35 (got {large['ratio']:.2f}), "
            f"peak < 150 MiB (got {large['peak_mib']:.1f}), difference <= 20 MiB"
        )


if __name__ == "__main__":
    main()

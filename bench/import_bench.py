"""Benchmark of the CSV import: preview and import time and peak memory by file size.

    .venv/bin/python bench/import_bench.py [--rows 100000] [--baseline 10000] [--repeat 1]
                                           [--database-url postgresql+psycopg://...]

Each measurement runs in a fresh process on a fresh database (SQLite in a temporary folder,
or --database-url, an existing throw-away database whose tables are all dropped first), so
its peak RSS is its own. The file is in
the Microsoft 365 "add multiple users" format (16 columns, CRLF). Prints medians over
--repeat runs, rows per second, and the per-row time against the baseline size measured in
the same run (a ratio near 1.0 means the cost grows linearly, memory flat means streaming).
Not run by `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = (
    "User Name,First Name,Last Name,Display Name,Job Title,Department,Office Number,"
    "Office Phone,Mobile Phone,Fax,Alternate email address,Address,City,State or Province,"
    "ZIP or Postal Code,Country or Region"
)


def write_file(path: Path, rows: int) -> None:
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write("\ufeff" + HEADER + "\r\n")
        for i in range(rows):
            out.write(
                f"user{i}@contoso.example,Zoë{i},O'Brien,Zoë O'Brien,Engineer,R&D,{i},"
                f"123-555-{i % 10000:04d},,,,1 Main St,Lyon,,69001,France\r\n"
            )


def one_run(phase: str, csv_path: str, database_url: str | None) -> dict:
    """In a child process: build a fresh demo database, then time one phase."""
    sys.path.insert(0, str(ROOT))
    import sqlalchemy as sa

    import wsgi
    from intranet_licenses import csv_import, licensing
    from intranet_licenses.license_file import generate_key_pair, load_private_key, sign_text
    from intranet_licenses.models import utcnow

    folder = Path(tempfile.mkdtemp(prefix="import-bench-"))
    private_pem, public_pem = generate_key_pair()
    (folder / "public.pem").write_bytes(public_pem)
    app = wsgi.create_app(
        {
            "SQLALCHEMY_DATABASE_URI": database_url or f"sqlite:///{folder / 'bench.db'}",
            "LICENSES_PUBLIC_KEYS": [str(folder / "public.pem")],
            "LICENSES_MAX_UPLOAD_BYTES": 1 << 30,
            "DEMO_PASSWORD_METHOD": "pbkdf2:sha256:1000",
        },
        instance_path=str(folder / "instance"),
    )
    with app.app_context():
        if database_url:
            tables = sa.MetaData()
            tables.reflect(wsgi.db.engine)
            tables.drop_all(wsgi.db.engine)
    assert app.test_cli_runner().invoke(args=["init-db"]).exit_code == 0
    fields = {
        "Registered-To": "Bench",
        "Host-Id": "BENCH",
        "Host-Name": "*",
        "Issued": "2026-01-01",
        "Expires": "Never",
        "MAX_USERS": "10000000",
    }
    with app.app_context():
        session = wsgi.db.session
        licensing.install(
            session,
            sign_text(fields, load_private_key(private_pem)),
            actor="bench",
            now=utcnow(),
            path="bench",
        )
        session.commit()
        start = time.perf_counter()
        if phase == "preview":
            result = csv_import.preview(session, csv_path, now=utcnow())
            ok = result.can_apply
        else:
            result = csv_import.apply(session, csv_path, actor="bench", now=utcnow(), path="bench")
            session.commit()
            ok = result.ok
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "ok": ok,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure(phase: str, csv_path: Path, repeat: int, database_url: str | None) -> dict:
    runs = []
    for _ in range(repeat):
        args = [sys.executable, __file__, "--child", phase, str(csv_path)]
        if database_url:
            args += ["--database-url", database_url]
        out = subprocess.run(args, check=True, capture_output=True, text=True, cwd=ROOT)
        run = json.loads(out.stdout.strip().splitlines()[-1])
        if not run["ok"]:
            raise SystemExit(f"{phase} of {csv_path} did not succeed")
        runs.append(run)
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "max_rss_mb": statistics.median(r["max_rss_mb"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--baseline", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--child", nargs=2, metavar=("PHASE", "CSV"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.child[0], args.child[1], args.database_url)))
        return

    folder = Path(tempfile.mkdtemp(prefix="import-bench-files-"))
    sizes = [args.baseline, args.rows]
    print(f"database: {args.database_url or 'SQLite (temporary file)'}; repeat {args.repeat}")
    print(
        f"{'phase':<8} {'rows':>9} {'MB file':>8} {'seconds':>9} {'rows/s':>9} "
        f"{'max RSS MB':>11} {'per-row vs baseline':>20}"
    )
    for phase in ("preview", "import"):
        base_per_row = None
        for rows in sizes:
            csv_path = folder / f"{rows}.csv"
            if not csv_path.exists():
                write_file(csv_path, rows)
            result = measure(phase, csv_path, args.repeat, args.database_url)
            per_row = result["seconds"] / rows
            base_per_row = base_per_row or per_row
            print(
                f"{phase:<8} {rows:>9,} {csv_path.stat().st_size / 1e6:>8.1f} "
                f"{result['seconds']:>9.2f} {rows / result['seconds']:>9,.0f} "
                f"{result['max_rss_mb']:>11.0f} {per_row / base_per_row:>20.2f}"
            )


if __name__ == "__main__":
    main()

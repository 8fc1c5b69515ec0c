"""'Activate waiting' for many people: in batches (ours) against one person per flush.

    .venv/bin/python bench/activate_bench.py [--people 20000] [--runs 3]
        [--url postgresql://postgres@127.0.0.1/test]

Each run makes a fresh database (SQLite in a scratch folder, or a new database on the
PostgreSQL server of ``--url``) holding ``--people`` people awaiting a license (created by
the directory path, ``seats.admit_or_wait``, with no seat free), installs a license with a
seat for each of them, and times one ``seats.activate_waiting`` and its commit, in a
process of its own (so that its peak memory is its own). The baseline, measured in the
same run, is the same call with ``seats.ACTIVATE_BATCH = 1``: one flush per person, as it
was before batches. Prints people per second (medians), their ratio, peak memory, and
whether the counters and waiting counts came out exact (``seats.recount`` finds nothing).
Not a test; not run by ``make test``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import admission_bench as bench  # noqa: E402

import wsgi  # noqa: E402
from intranet_licenses import licensing, seats  # noqa: E402
from intranet_licenses.models import utcnow  # noqa: E402


def one_run(url: str, keys: str, people: int, batch: int, results) -> None:
    """In a child process: the waiting people, a license for them, one activation."""
    keys = Path(keys)
    seats.ACTIVATE_BATCH = batch
    bench.prepare(url, keys, 0)
    app = bench.make_app(url, keys)
    with app.app_context():
        session = wsgi.db.session
        for start in range(0, people, 500):
            batch_people = [
                seats.NewPerson(f"w{n}", "Wai", "Ting", "")
                for n in range(start, min(people, start + 500))
            ]
            seats.admit_or_wait(
                session, batch_people, source="directory", path="bench", actor="bench",
                now=utcnow(),
            )  # fmt: skip
            session.commit()
        text = bench.license_text(keys, people)
        licensing.install(session, text, actor="bench", now=utcnow(), path="bench")
        session.commit()
        started = time.perf_counter()
        result = seats.activate_waiting(session, actor="bench", now=utcnow(), path="bench")
        session.commit()
        elapsed = time.perf_counter() - started
        exact = not seats.recount(session, actor="bench", now=utcnow())
        session.rollback()
        wsgi.dispose_engines()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results.put((len(result.activated), elapsed, peak, exact))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--url", help="A PostgreSQL server URL (default: SQLite)")
    options = parser.parse_args()
    keys = bench.vendor_keys("activate-bench-")
    context = multiprocessing.get_context("spawn")
    rates: dict[str, list[float]] = {"batches": [], "one by one": []}
    peaks: dict[str, list[float]] = {"batches": [], "one by one": []}
    for run in range(options.runs):
        for name, batch in (("one by one", 1), ("batches", seats.ACTIVATE_BATCH)):
            if options.url:
                server = options.url.replace("postgresql://", "postgresql+psycopg://", 1)
                url = bench.fresh_database(server)
            else:
                url = f"sqlite:///{keys}/activate-{run}-{batch}.db"
            results = context.Queue()
            child = context.Process(
                target=one_run, args=(url, str(keys), options.people, batch, results)
            )
            child.start()
            activated, elapsed, peak, exact = results.get(timeout=3600)
            child.join()
            if options.url:
                bench.drop_database(server, url)
            if activated != options.people or not exact:
                raise SystemExit(f"{name}: activated {activated}, exact {exact}")
            rates[name].append(activated / elapsed)
            peaks[name].append(peak)
            print(
                f"run {run + 1} {name:10}: {activated / elapsed:8.0f} people/s "
                f"({elapsed:.1f} s), peak {peak:.0f} MB, accounting exact",
                flush=True,
            )
    ours, baseline = statistics.median(rates["batches"]), statistics.median(rates["one by one"])
    database = "PostgreSQL" if options.url else "SQLite"
    print(f"\n{database}, {options.people} people waiting, median of {options.runs} runs:")
    for name in ("batches", "one by one"):
        label = f"batches of {seats.ACTIVATE_BATCH}" if name == "batches" else name
        print(
            f"  {label:16}: {statistics.median(rates[name]):8.0f} people/s, "
            f"peak {max(peaks[name]):.0f} MB"
        )
    print(f"  ratio batches/one by one: {ours / baseline:.1f}")


if __name__ == "__main__":
    main()

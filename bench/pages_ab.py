"""Two checkouts of the project served side by side on one database: which pages got quicker.

Not a test and not run by ``make test``. On the machines here the trivial page's own rate
drifts by a third within minutes, more than most changes move a page; measured one after
the other, a 10 % change is lost in it. This serves checkout A (say ``git worktree add
/tmp/before HEAD~1``) and checkout B (the project folder) with gunicorn at once, as
``pages_bench.py`` serves one, and loads them in turns, A then B then B then A, each page
just after that server's trivial page:

    .venv/bin/python bench/pages_ab.py /tmp/before . --url DATABASE_URL --folder DIR
        [--page License --page "People, first page" ...] [--rounds 6] [--seconds 3]

``--url`` and ``--folder`` name a database and its instance folder that ``pages_bench.py``
built (``--folder DIR``, with ``--postgres`` for PostgreSQL: the URL is then
``postgresql+psycopg://.../licenses_bench_pages``). Each checkout runs its own code (its
``wsgi.py`` and ``intranet_licenses``) with its own ``.venv`` if it has one, else this one.
Prints, per page, each checkout's median ratio to its trivial page and the median of B's
ratio over A's of the same round: above 1, B serves the page quicker.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pages_bench import (  # noqa: E402
    WORKER_CONNECTIONS,
    check,
    free_port,
    load,
    log_in,
    pages,
    wait_for,
)
from profiles import ensure_license  # noqa: E402


def serve(root: Path, url: str, instance: Path) -> tuple[subprocess.Popen, int]:
    """gunicorn serving the demo of checkout ``root``, as ``pages_bench.py`` serves it."""
    venv = root / ".venv" / "bin" / "gunicorn"
    gunicorn = venv if venv.exists() else Path(sys.executable).parent / "gunicorn"
    port = free_port()
    server = subprocess.Popen(
        [str(gunicorn), "--worker-class", "gthread", "--workers", "2", "--threads", "4",
         "--worker-connections", str(WORKER_CONNECTIONS), "--bind", f"127.0.0.1:{port}",
         "--log-level", "warning", "--graceful-timeout", "5",
         f"wsgi:create_app(instance_path={str(instance)!r})"],
        cwd=root, env={**os.environ, "DATABASE_URL": url}, start_new_session=True,
    )  # fmt: skip
    wait_for(port)
    return server, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="Checkout A (the baseline)")
    parser.add_argument("b", type=Path, help="Checkout B (the change)")
    parser.add_argument("--url", required=True, help="The database pages_bench.py built")
    parser.add_argument("--folder", required=True, type=Path, help="Its folder")
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--page", action="append", help="A page label of pages_bench.py")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    everything = pages(args.size)
    trivial, chosen = everything[0], everything[1:]
    if args.page:
        chosen = [p for p in chosen if p[0] in args.page]
        unknown = set(args.page) - {label for label, _, _ in chosen}
        if unknown:
            sys.exit(f"No such page: {', '.join(sorted(unknown))}")
    instance = args.folder / "instance"
    ensure_license(args.url, instance)
    roots = [args.a.resolve(), args.b.resolve()]
    servers = []
    try:
        for root in roots:
            server, port = serve(root, args.url, instance)
            servers.append((server, port, log_in(port)))
        for _, port, cookie in servers:
            for _, path, expected in [trivial, *chosen]:
                check(port, cookie, path, expected)
                load(port, cookie, path, 1)  # warm up each worker's caches
        ratios = {(side, label): [] for side in (0, 1) for label, _, _ in chosen}
        for round_ in range(args.rounds):
            for label, path, _ in chosen:
                for side in (0, 1) if round_ % 2 == 0 else (1, 0):
                    _, port, cookie = servers[side]
                    base = load(port, cookie, trivial[1], args.seconds)[0]
                    ratios[(side, label)].append(load(port, cookie, path, args.seconds)[0] / base)
    finally:
        for server, _, _ in servers:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    print(f"A = {roots[0]}, B = {roots[1]}; medians of {args.rounds} rounds of {args.seconds} s")
    for label, _, _ in chosen:
        a, b = ratios[(0, label)], ratios[(1, label)]
        change = statistics.median(y / x for x, y in zip(a, b, strict=True))
        print(f"{label:<34} A {statistics.median(a):.2f}  B {statistics.median(b):.2f}  "
              f"B/A {change:.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

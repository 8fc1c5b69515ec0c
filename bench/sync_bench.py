"""Benchmark of the directory sync against a real slapd: rows/s, peak memory, seat accounting.

    .venv/bin/python bench/sync_bench.py [--rows 100000] [--baseline 10000]
                                         [--database-url postgresql+psycopg://...]

For each size (the baseline first) it starts a scratch OpenLDAP slapd on loopback with the
test suite's helper (``tests/slapd.py``: its own cn=config, the AD-like schema), loads the
people offline with ``slapadd`` (AD-like ``user`` entries with ``objectGUID``,
``sAMAccountName`` and ``userAccountControl``; areas primary/partners/suppliers 3:1:1, the
partners through a ``groupOfNames``, the suppliers through an OU, one person in 20 disabled),
makes a fresh demo database (SQLite in a temporary folder, or --database-url, an existing
throw-away database whose tables are all dropped first) and installs a license with fewer
seats than people (half the enabled intranet people, three quarters of the extranet ones),
so that the sync creates people waiting for a license (rule 3). Then, each in a fresh
process whose peak resident memory (VmHWM) is its own:

- ``read``: ``directory.read_directory`` alone (the LDAP side);
- ``sync 1``: ``flask licenses sync-directory`` (through Flask's CLI runner), everybody new;
- ``sync 2``: the same command again, nothing changed in the directory (all unchanged);
- ``check``: the seat accounting, exactly: ``seats.recount`` finds no drift (then rolled
  back), every counter equals the profiles' active count per pool, each pool's active
  people == min(seats, enabled people), the rest wait, disabled accounts were not created.

Prints seconds, rows/s, peak RSS and the per-row time against the baseline size measured in
the same run (near 1.0: linear), with the load average before each phase. Not a test; not
run by `make test`. Needs Debian's slapd (/usr/sbin/slapd and slapadd).
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's slapd helper, shared as it is

import machine  # noqa: E402
from slapd import ADMIN_DN, ADMIN_PASSWORD, SUFFIX, Slapd, slapd_binary  # noqa: E402

PEOPLE_OU = f"ou=People,{SUFFIX}"
SUPPLIERS_OU = f"ou=Suppliers,{PEOPLE_OU}"
PARTNERS_GROUP = f"cn=partners,ou=Groups,{SUFFIX}"
FIRST = ["Anna", "Björn", "Chloé", "Dmitri", "Élodie", "Farah", "Gustav", "Hana", "Ярослава",
         "美咲", "Ana-Maria", "Jean Luc"]  # fmt: skip
LAST = ["Andersen", "O'Brien", "Dubois", "Nguyen", "Müller", "García", "Kowalski", "山田",
        "Smith-Jones"]  # fmt: skip
AREAS = ("primary", "primary", "primary", "partners", "suppliers")
POOL = {"primary": "intranet", "partners": "extranet", "suppliers": "extranet"}
REPORT = re.compile(
    r"Directory sync: (\d+) created active, (\d+) created waiting, (\d+) activated, "
    r"(\d+) blocked, (\d+) updated, (\d+) unchanged, (\d+) skipped\."
)
COUNTS = ("created active", "created waiting", "activated", "blocked", "updated", "unchanged",
          "skipped")  # fmt: skip


def person(i: int) -> dict:
    """Person number ``i``: area by i % 5, one in 20 disabled (spread over the areas)."""
    area = AREAS[i % 5]
    first, last = FIRST[i % len(FIRST)], LAST[i % len(LAST)]
    parent = SUPPLIERS_OU if area == "suppliers" else PEOPLE_OU
    username = f"user{i:07d}"
    return {
        "dn": f"cn={username},{parent}",
        "username": username,
        "first": first,
        "last": last,
        "area": area,
        "disabled": (i // 5) % 20 == 3,
        "guid": uuid.UUID(int=(0x5EED << 96) + i),
    }


def expected(size: int) -> dict:
    """Enabled and disabled people per pool, and the seats the license gives."""
    enabled = {"intranet": 0, "extranet": 0}
    disabled = 0
    for i in range(size):
        p = person(i)
        if p["disabled"]:
            disabled += 1
        else:
            enabled[POOL[p["area"]]] += 1
    seats = {"intranet": enabled["intranet"] // 2, "extranet": enabled["extranet"] * 3 // 4}
    return {"enabled": enabled, "disabled": disabled, "seats": seats}


def write_ldif(path: Path, size: int) -> None:
    """The suffix, the OUs, the people and the partners group, for slapadd."""
    partners = []
    with open(path, "w", encoding="utf-8") as out:
        out.write(f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\n"
                  "dc: licenses\no: licenses\n\n")  # fmt: skip
        for dn, name in ((PEOPLE_OU, "People"), (SUPPLIERS_OU, "Suppliers"),
                         (f"ou=Groups,{SUFFIX}", "Groups")):  # fmt: skip
            out.write(f"dn: {dn}\nobjectClass: organizationalUnit\nou: {name}\n\n")
        for i in range(size):
            p = person(i)
            guid = base64.b64encode(p["guid"].bytes_le).decode()
            text = (
                f"dn: {p['dn']}\nobjectClass: top\nobjectClass: person\n"
                "objectClass: organizationalPerson\nobjectClass: inetOrgPerson\n"
                f"objectClass: user\ncn: {p['username']}\n"
                f"sn:: {_b64(p['last'])}\ngivenName:: {_b64(p['first'])}\n"
                f"sAMAccountName: {p['username']}\n"
                f"userAccountControl: {514 if p['disabled'] else 512}\n"
                f"objectGUID:: {guid}\nmail: {p['username']}@example.com\n\n"
            )
            out.write(text)
            if p["area"] == "partners":
                partners.append(p["dn"])
        out.write(f"dn: {PARTNERS_GROUP}\nobjectClass: groupOfNames\ncn: partners\n")
        out.writelines(f"member: {dn}\n" for dn in partners)
        out.write("\n")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# In a child process ------------------------------------------------------------------------


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _app(setup: dict):
    sys.path.insert(0, str(ROOT))
    import wsgi

    app = wsgi.create_app(
        {
            "SQLALCHEMY_DATABASE_URI": setup["database_url"],
            "LICENSES_PUBLIC_KEYS": [setup["public_key"]],
            "LICENSES_EXTRANET_AREAS": ["partners", "suppliers"],
            "LICENSES_LDAP_URL": setup["ldap_url"],
            "LICENSES_LDAP_BIND_DN": ADMIN_DN,
            "LICENSES_LDAP_PASSWORD": ADMIN_PASSWORD,
            "LICENSES_LDAP_BASE_DN": SUFFIX,
            "LICENSES_LDAP_AREAS": {"partners": PARTNERS_GROUP, "suppliers": SUPPLIERS_OU},
            "LICENSES_LDAP_TIMEOUT": 60,
            "DEMO_PASSWORD_METHOD": "pbkdf2:sha256:1000",
        },
        instance_path=setup["instance"],
    )
    return app, wsgi


def child(phase: str, setup: dict) -> dict:
    app, wsgi = _app(setup)
    from intranet_licenses import directory, seats
    from intranet_licenses.models import POOLS, Profile, utcnow

    if phase == "setup":
        import sqlalchemy as sa

        from intranet_licenses import licensing
        from intranet_licenses.license_file import load_private_key, sign_text

        with app.app_context():
            if not setup["database_url"].startswith("sqlite"):
                tables = sa.MetaData()
                tables.reflect(wsgi.db.engine)
                tables.drop_all(wsgi.db.engine)
        assert app.test_cli_runner().invoke(args=["init-db"]).exit_code == 0
        seats_given = setup["expected"]["seats"]
        fields = {
            "Registered-To": "Bench", "Host-Id": "BENCH", "Host-Name": "*", "Issued": "2026-01-01",
            "Expires": "Never", "MAX_USERS": str(seats_given["intranet"]),
            "MAX_EXTRANET_USERS": str(seats_given["extranet"]), "MAX_READONLY_USERS": "0",
        }  # fmt: skip
        private = load_private_key(Path(setup["private_key"]).read_bytes())
        with app.app_context():
            session = wsgi.db.session
            licensing.install(
                session, sign_text(fields, private), actor="bench", now=utcnow(), path="bench"
            )
            session.commit()
        return {}

    before = _hwm_mb()
    if phase == "read":
        with app.app_context():
            start = time.perf_counter()
            listing = directory.read_directory(directory.settings_from_config())
            seconds = time.perf_counter() - start
            listed = len(listing.people)
        return {"seconds": seconds, "hwm_mb": _hwm_mb(), "hwm_before_mb": before, "n": listed}

    if phase == "sync":
        start = time.perf_counter()
        result = app.test_cli_runner().invoke(args=["licenses", "sync-directory"])
        seconds = time.perf_counter() - start
        if result.exit_code != 0:
            import traceback

            trace = (
                "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
            )
            raise SystemExit(f"sync failed: {result.output}{trace}")
        found = REPORT.search(result.output)
        counts = dict(zip(COUNTS, map(int, found.groups()), strict=True))
        return {
            "seconds": seconds,
            "hwm_mb": _hwm_mb(),
            "hwm_before_mb": before,
            "counts": counts,
            "progress_lines": sum(
                "Directory sync: read" in line or "applied" in line
                for line in result.output.splitlines()
            ),  # fmt: skip
        }

    # check: the seat accounting, exactly
    import sqlalchemy as sa

    with app.app_context():
        session = wsgi.db.session
        counters = seats.usage(session)
        User = wsgi.User
        active = dict(
            session.execute(
                sa.select(Profile.pool, sa.func.count())
                .join(User, User.id == Profile.user_id)
                .where(User.active.is_(True), Profile.exempt.is_(False))
                .group_by(Profile.pool)
            ).all()
        )
        holding = dict(
            session.execute(
                sa.select(Profile.seat_pool, sa.func.count())
                .where(Profile.seat_pool.is_not(None))
                .group_by(Profile.seat_pool)
            ).all()
        )
        waiting = seats.waiting(session)
        profiles = session.execute(sa.select(sa.func.count()).select_from(Profile)).scalar()
        findings = seats.recount(session, actor="bench", now=utcnow())
        session.rollback()
    return {
        "counters": counters,
        "active": {p: active.get(p, 0) for p in POOLS},
        "holding": {p: holding.get(p, 0) for p in POOLS},
        "waiting": waiting,
        "profiles": profiles,
        "recount_findings": findings,
    }


# The parent ------------------------------------------------------------------------------


def run_child(phase: str, setup_file: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", phase, str(setup_file)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"{phase} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def check(size: int, exp: dict, first: dict, second: dict, acct: dict) -> list[str]:
    """Every way the figures could be wrong, as sentences (empty: exact)."""
    problems = []
    seats, enabled = exp["seats"], exp["enabled"]
    want_active = {p: min(seats[p], enabled[p]) for p in enabled}
    want_first = {
        "created active": sum(want_active.values()),
        "created waiting": sum(enabled.values()) - sum(want_active.values()),
        "activated": 0, "blocked": 0, "updated": 0, "unchanged": 0, "skipped": 0,
    }  # fmt: skip
    want_second = dict.fromkeys(COUNTS, 0) | {"unchanged": sum(enabled.values())}
    if first["counts"] != want_first:
        problems.append(f"first sync {first['counts']} != {want_first}")
    if second["counts"] != want_second:
        problems.append(f"second sync {second['counts']} != {want_second}")
    for pool in ("intranet", "extranet", "readonly"):
        a, c, h = acct["active"][pool], acct["counters"][pool], acct["holding"][pool]
        want = want_active.get(pool, 0)
        if not a == c == h == want:
            problems.append(f"{pool}: active {a}, counter {c}, seats held {h}, expected {want}")
        wait = enabled.get(pool, 0) - want
        if acct["waiting"][pool] != wait:
            problems.append(f"{pool}: {acct['waiting'][pool]} waiting, expected {wait}")
    if acct["profiles"] != sum(enabled.values()) + 1:
        problems.append(f"{acct['profiles']} profiles, expected {sum(enabled.values()) + 1}")
    if acct["recount_findings"]:
        problems.append(f"recount found drift: {acct['recount_findings']}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--baseline", type=int, default=10_000)
    parser.add_argument("--database-url", help="a throw-away database (all tables dropped)")
    parser.add_argument("--child", nargs=2, metavar=("PHASE", "SETUP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        setup = json.loads(Path(args.child[1]).read_text())
        print(json.dumps(child(args.child[0], setup)))
        return
    if slapd_binary() is None:
        raise SystemExit("slapd is not installed (apt-get install slapd ldap-utils)")

    sys.path.insert(0, str(ROOT))
    from intranet_licenses.license_file import generate_key_pair

    print(machine.line())
    print(f"database: {args.database_url or 'SQLite (temporary file)'}")
    rows_out = []
    base_per_row: dict[str, float] = {}
    for size in (args.baseline, args.rows):
        folder = Path(tempfile.mkdtemp(prefix=f"sync-bench-{size}-"))
        private_pem, public_pem = generate_key_pair()
        (folder / "private.pem").write_bytes(private_pem)
        (folder / "public.pem").write_bytes(public_pem)
        exp = expected(size)
        start = time.perf_counter()
        write_ldif(folder / "people.ldif", size)
        server = Slapd(folder / "slapd", max_size=4 * 2**30)
        server.load_offline(folder / "people.ldif")
        server.start()
        loaded = time.perf_counter() - start
        print(
            f"\n{size:,} people: LDIF written and slapadd-ed in {loaded:.1f} s; seats "
            f"{exp['seats']}, enabled {exp['enabled']}, disabled {exp['disabled']}"
        )
        try:
            setup = {
                "database_url": args.database_url or f"sqlite:///{folder / 'bench.db'}",
                "instance": str(folder / "instance"),
                "public_key": str(folder / "public.pem"),
                "private_key": str(folder / "private.pem"),
                "ldap_url": server.url,
                "expected": exp,
            }
            setup_file = folder / "setup.json"
            setup_file.write_text(json.dumps(setup))
            run_child("setup", setup_file)
            results = {}
            for phase, label in (("read", "read"), ("sync", "sync 1"), ("sync", "sync 2")):
                load = machine.load()
                results[label] = run_child(phase, setup_file) | {"load": load}
                r = results[label]
                print(f"  {label:<7} {r['seconds']:8.2f} s  {size / r['seconds']:9,.0f} rows/s  "
                      f"peak {r['hwm_mb']:6.1f} MB (before: {r['hwm_before_mb']:.1f})  "
                      f"load {load}  {r.get('counts', '')}")  # fmt: skip
            acct = run_child("check", setup_file)
            problems = check(size, exp, results["sync 1"], results["sync 2"], acct)
            print(f"  seat accounting: counters {acct['counters']}, active {acct['active']}, "
                  f"waiting {acct['waiting']}, profiles {acct['profiles']}, recount findings "
                  f"{acct['recount_findings'] or 'none'}: "
                  + ("EXACT" if not problems else "WRONG: " + "; ".join(problems)))  # fmt: skip
            for label, r in results.items():
                per_row = r["seconds"] / size
                base_per_row.setdefault(label, per_row)
                rows_out.append((label, size, r, per_row / base_per_row[label], not problems))
        finally:
            server.stop()
            shutil.rmtree(folder, ignore_errors=True)

    print(f"\n{machine.line()}")
    print(f"{'phase':<8} {'people':>9} {'seconds':>9} {'rows/s':>9} {'peak MB':>8} "
          f"{'per-row vs baseline':>20} {'load before':>16} {'accounting':>11}")  # fmt: skip
    for label, size, r, ratio, exact in rows_out:
        print(f"{label:<8} {size:>9,} {r['seconds']:>9.2f} {size / r['seconds']:>9,.0f} "
              f"{r['hwm_mb']:>8.1f} {ratio:>20.2f} {r['load']:>16} "
              f"{'exact' if exact else 'WRONG':>11}")  # fmt: skip


if __name__ == "__main__":
    main()

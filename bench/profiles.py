"""Benchmark data: a demo intranet database with N profiles, built by bulk inserts.

Shared by the benchmarks in this folder (not part of the extension). ``build_sqlite`` and
``build_postgres`` create the demo schema through ``wsgi.create_app`` and ``flask init-db``
(so the administrator account and every migration are there), then load people straight into
the demo's ``users`` table and ``licenses_profile`` and set the seat counters from the
profiles, as ``flask licenses recount`` would.

The people: names from several scripts, one surname in 500 needing quoting or neutralising,
one person in 20 blocked (reason admin, license or directory in turn), areas primary,
partners and suppliers 3:1:1, one in 50 read-only, every other person has logged in.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
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

USER_COLUMNS = ("id", "username", "first_name", "surname", "email", "active", "created_at",
                "last_login_at", "is_sysadmin", "is_people_admin")  # fmt: skip
PROFILE_COLUMNS = ("user_id", "area", "readonly", "pool", "seat_pool", "exempt",
                   "block_reason", "created_at", "source", "username_key", "first_name_key",
                   "surname_key", "email_key")  # fmt: skip

#: The user rows' columns of the benchmark baselines: the export's cells as stored.
BASELINE_SQL = (
    "SELECT u.username, u.first_name, u.surname, u.id, u.active, u.email, p.area, p.pool, "
    "p.block_reason, u.created_at, u.last_login_at "
    "FROM users u JOIN licenses_profile p ON p.user_id = u.id ORDER BY u.id"
)


def people(size: int) -> Iterator[tuple[tuple, tuple]]:
    """(user row, profile row) for ids 2..size (id 1 is the administrator account)."""
    start = datetime(2020, 1, 1, 8, 0)
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
             (created + timedelta(days=3)).isoformat(" ", "microseconds") if i % 2 else None,
             False, False),
            (i, area, i % 50 == 0, "readonly" if i % 50 == 0 else
             ("intranet" if area == "primary" else "extranet"),
             None if blocked else ("readonly" if i % 50 == 0 else
                                   ("intranet" if area == "primary" else "extranet")),
             False, ("admin", "license", "directory")[i % 3] if blocked else None,
             created.isoformat(" ", "microseconds"), "host", username, first.lower(),
             last.lower(), f"{username}@example.com"),
        )  # fmt: skip


def create_schema(url: str, instance: Path) -> None:
    """The demo's tables, the extension's migrations and the administrator account."""
    sys.path.insert(0, str(ROOT))
    import wsgi

    app = wsgi.create_app(
        {"SQLALCHEMY_DATABASE_URI": url, "DEMO_PASSWORD_METHOD": "pbkdf2:sha256:1"},
        instance_path=str(instance),
    )
    result = app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        wsgi.dispose_engines()


def ensure_license(url: str, instance: Path) -> None:
    """A valid license in force, as on a real intranet: the License page verifies it, shows
    every field and the meters their limits.

    The vendor key pair is kept in the ``instance`` folder, where the demo app finds the
    public key (``wsgi.create_app``); a database whose license is not valid under it (none
    yet, say) gets a new license for any host with room in every pool: a tenth more seats
    than its counters say are in use, so that no pool is over its limit.
    """
    sys.path.insert(0, str(ROOT))
    import wsgi
    from intranet_licenses import licensing, seats
    from intranet_licenses.license_file import generate_key_pair, sign_text
    from intranet_licenses.models import utcnow

    instance.mkdir(parents=True, exist_ok=True)
    private, public = instance / wsgi.PRIVATE_KEY, instance / wsgi.PUBLIC_KEY
    if not private.exists():
        private_pem, public_pem = generate_key_pair()
        private.write_bytes(private_pem)
        public.write_bytes(public_pem)
    app = wsgi.create_app({"SQLALCHEMY_DATABASE_URI": url}, instance_path=str(instance))
    with app.app_context():
        session = wsgi.db.session
        if not licensing.current(session, utcnow().date()).status.valid:
            used = {f.pool: f.used for f in seats.figures(session, utcnow())}
            fields = {
                "Registered-To": "Benchmark Intranet",
                "Host-Name": "*",
                "Issued": "2026-01-01",
                "Expires": "Never",
                "CRM_ALLOWED": "Yes",
            }
            for pool, key in (
                ("intranet", "MAX_USERS"),
                ("extranet", "MAX_EXTRANET_USERS"),
                ("readonly", "MAX_READONLY_USERS"),
            ):
                fields[key] = str(used[pool] + used[pool] // 10 + 10)
            text = sign_text(fields, private.read_bytes())
            licensing.install(session, text, actor="bench", now=utcnow(), path="bench")
            session.commit()
        wsgi.dispose_engines()


_COUNTERS_SQL = (  # the waiting counts are kept by the triggers of migration 0006
    "UPDATE licenses_seat_counter SET used = (SELECT count(*) FROM licenses_profile p "
    "WHERE p.seat_pool = licenses_seat_counter.pool)"
)


def build_sqlite(folder: Path, size: int) -> Path:
    """A demo SQLite database with ``size`` profiles (kept in ``folder`` and reused)."""
    path = folder / f"people-{size}.db"
    if path.exists():
        return path
    partial = folder / f"people-{size}.db.part"
    partial.unlink(missing_ok=True)
    create_schema(f"sqlite:///{partial}", folder / "instance")
    connection = sqlite3.connect(partial)
    # Load without the write-ahead log (a 400 MB WAL would be read, and counted, by the runs
    # that follow), then hand the file back in WAL mode as the demo uses it.
    connection.execute("PRAGMA journal_mode=DELETE")
    connection.execute("PRAGMA synchronous=OFF")
    users_sql = (f"INSERT INTO users ({', '.join(USER_COLUMNS)}) "
                 f"VALUES ({', '.join('?' * len(USER_COLUMNS))})")  # fmt: skip
    profiles_sql = (f"INSERT INTO licenses_profile ({', '.join(PROFILE_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(PROFILE_COLUMNS))})")  # fmt: skip
    with connection:
        for users, profiles in _batches(size):
            connection.executemany(users_sql, users)
            connection.executemany(profiles_sql, profiles)
        connection.execute(_COUNTERS_SQL)
    connection.execute("ANALYZE")
    connection.execute("PRAGMA journal_mode=WAL")
    connection.close()
    partial.rename(path)
    return path


def build_postgres(url: str, size: int, instance: Path) -> None:
    """Fill the (empty) PostgreSQL database at ``url`` with ``size`` profiles, by COPY.

    ``url`` is a SQLAlchemy URL (``postgresql+psycopg://...``).
    """
    import psycopg

    create_schema(url, instance)
    with psycopg.connect(url.replace("+psycopg", "")) as connection:
        with connection.cursor() as cursor:
            for users, profiles in _batches(size):
                with cursor.copy(f"COPY users ({', '.join(USER_COLUMNS)}) FROM STDIN") as copy:
                    for row in users:
                        copy.write_row(row)
                columns = ", ".join(PROFILE_COLUMNS)
                with cursor.copy(f"COPY licenses_profile ({columns}) FROM STDIN") as copy:
                    for row in profiles:
                        copy.write_row(row)
            cursor.execute(_COUNTERS_SQL)
            cursor.execute("SELECT setval(pg_get_serial_sequence('users', 'id'), %s)", (size,))
        connection.commit()
        connection.autocommit = True
        connection.execute("VACUUM ANALYZE")


def _batches(size: int, rows: int = 50_000):
    users, profiles = [], []
    for user, profile in people(size):
        users.append(user)
        profiles.append(profile)
        if len(users) >= rows:
            yield users, profiles
            users, profiles = [], []
    if users:
        yield users, profiles

"""The People export: exact bytes, columns, filters, neutralisation, page, CLI and streaming."""

from __future__ import annotations

import csv
import io
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from http.client import HTTPConnection, IncompleteRead
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import app_config

import wsgi
from intranet_licenses import export, seats
from intranet_licenses.models import (
    AWAITING_LICENSE,
    BLOCKED_BY_ADMIN,
    BLOCKED_BY_DIRECTORY,
    Profile,
    utcnow,
)

HEADER = "Username,First name,Surname,ID"
ALL = "account_state,email,area,pool,block_reason,created,last_login"


def run_export(app, **choices) -> bytes:
    """The export's bytes through the service, as the page and the CLI call it."""
    kwargs = {key: choices.pop(key) for key in ("batch_rows", "chunk_bytes") if key in choices}
    with app.app_context():
        return export.export_bytes(export.options(**choices), **kwargs)


def parse(data: bytes) -> list[list[str]]:
    text = data.decode("utf-8-sig")
    return list(csv.reader(io.StringIO(text, newline="")))


def as_dicts(data: bytes) -> dict[str, dict[str, str]]:
    """Rows keyed by username."""
    header, *rows = parse(data)
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def set_user(app, username: str, **values) -> None:
    """Write the host's user row directly, as host code or a directory would."""
    with app.app_context():
        user = wsgi.db.session.scalar(sa.select(wsgi.User).where(wsgi.User.username == username))
        for name, value in values.items():
            setattr(user, name, value)
        wsgi.db.session.commit()


def user_id(app, username: str) -> int:
    with app.app_context():
        return wsgi.db.session.scalar(
            sa.select(wsgi.User.id).where(wsgi.User.username == username)
        )


# The exact form -------------------------------------------------------------------------


def test_demo_export_with_account_state(app, runner):
    """The demo's own data: admin first with Yes, blocked people read No."""
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    result = runner.invoke(args=["seed-demo", "--password", "x"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(args=["licenses", "export", "--columns", "account_state"])
    assert result.exit_code == 0, result.output
    data = result.stdout_bytes
    lines = data.split(b"\r\n")
    assert lines[0] == b"Username,First name,Surname,ID,Account state"
    assert lines[1] == b"admin,Intranet,Administrator,1,Yes"
    assert data.endswith(b"\r\n") and b"\n" not in data.replace(b"\r\n", b"")
    rows = as_dicts(data)
    with app.app_context():
        blocked = wsgi.db.session.scalars(
            sa.select(wsgi.User.username).where(wsgi.User.active.is_(False))
        ).all()
    assert len(blocked) == 5  # three blocked by an administrator, two awaiting a license
    assert {rows[name]["Account state"] for name in blocked} == {"No"}
    assert rows["jennifer"]["Account state"] == "Yes"
    ids = [int(row["ID"]) for row in rows.values()]
    assert ids == sorted(ids) and len(ids) == 64


def test_default_is_the_four_columns_in_id_order_with_crlf(app, make_person):
    make_person("zed", first_name="Zed", surname="Last")
    make_person("amy", first_name="Amy", surname="First")
    data = run_export(app)
    assert (
        data
        == (
            f"{HEADER}\r\n"
            "admin,Intranet,Administrator,1\r\n"
            f"zed,Zed,Last,{user_id(app, 'zed')}\r\n"
            f"amy,Amy,First,{user_id(app, 'amy')}\r\n"
        ).encode()
    )


def test_all_columns_in_their_order_whatever_order_they_are_asked_in(app):
    data = run_export(app, columns="last_login,created,block_reason,pool,area,email,account_state")
    assert data.split(b"\r\n")[0] == (
        b"Username,First name,Surname,ID,Account state,Email,Area,Pool,Block reason,Created,"
        b"Last login"
    )
    assert run_export(app, columns="ALL") == data
    assert run_export(app, columns=["email", "account_state"]).split(b"\r\n")[0] == (
        b"Username,First name,Surname,ID,Account state,Email"
    )


@pytest.fixture
def people(app, make_person):
    """Four people covering every value of every optional column."""
    make_person("ann", email="ann@example.com")
    make_person("bob", area="partners", blocked=BLOCKED_BY_ADMIN)
    make_person("cid", readonly=True, blocked=AWAITING_LICENSE)
    make_person("dee", area="suppliers", blocked=BLOCKED_BY_DIRECTORY, email="")
    set_user(
        app,
        "ann",
        created_at=datetime(2024, 2, 29, 23, 59, 59, 999999),
        last_login_at=datetime(2026, 1, 5, 7, 3, 0),
    )
    set_user(app, "bob", created_at=datetime(2025, 12, 31, 0, 0), last_login_at=None)
    return ["ann", "bob", "cid", "dee"]


@pytest.mark.parametrize(
    ("column", "label", "expected"),
    [
        ("account_state", "Account state", {"admin": "Yes", "ann": "Yes", "bob": "No"}),
        ("email", "Email", {"admin": "admin@example.com", "ann": "ann@example.com", "dee": ""}),
        ("area", "Area", {"admin": "primary", "bob": "partners", "dee": "suppliers"}),
        ("pool", "Pool", {"ann": "intranet", "bob": "extranet", "cid": "readonly"}),
        (
            "block_reason",
            "Block reason",
            {
                "admin": "",
                "ann": "",
                "bob": "Blocked by an administrator",
                "cid": "Awaiting a license",
                "dee": "Blocked by the directory",
            },
        ),
        ("created", "Created", {"ann": "2024-02-29 23:59", "bob": "2025-12-31 00:00"}),
        ("last_login", "Last login", {"ann": "2026-01-05 07:03", "bob": "", "cid": ""}),
    ],
)
def test_each_optional_column(app, people, column, label, expected):
    data = run_export(app, columns=column)
    assert data.split(b"\r\n")[0] == f"{HEADER},{label}".encode()
    rows = as_dicts(data)
    assert set(rows) == {"admin", *people}
    for username, value in expected.items():
        assert rows[username][label] == value, username


@pytest.mark.parametrize(
    ("choices", "expected"),
    [
        ({}, {"admin", "ann", "bob", "cid", "dee"}),
        ({"state": "all"}, {"admin", "ann", "bob", "cid", "dee"}),
        ({"state": "active"}, {"admin", "ann"}),
        ({"state": "blocked"}, {"bob", "cid", "dee"}),
        ({"area": "primary"}, {"admin", "ann", "cid"}),
        ({"area": "Partners"}, {"bob"}),
        ({"area": "primary", "state": "blocked"}, {"cid"}),
        ({"area": "suppliers", "state": "active"}, set()),
    ],
)
def test_filters(app, people, choices, expected):
    assert set(as_dicts(run_export(app, **choices))) == expected


def test_no_matching_profiles_is_the_header_alone(app):
    assert run_export(app, area="suppliers") == f"{HEADER}\r\n".encode()
    assert run_export(app, area="suppliers", columns="email", bom=True) == (
        f"\ufeff{HEADER},Email\r\n".encode()
    )


def test_bom_exactly_once_and_only_when_asked(app, make_person):
    for number in range(30):
        make_person(f"p{number:02d}", first_name="Zoë")
    plain = run_export(app, columns="all", batch_rows=4, chunk_bytes=100)
    with_bom = run_export(app, columns="all", bom=True, batch_rows=4, chunk_bytes=100)
    assert not plain.startswith(b"\xef\xbb\xbf")
    assert b"\xef\xbb\xbf" not in plain
    assert with_bom.startswith(b"\xef\xbb\xbfUsername,")
    assert with_bom.count(b"\xef\xbb\xbf") == 1
    assert with_bom[3:] == plain
    with app.app_context():
        chunks = list(export.stream(export.options(bom=True), batch_rows=4, chunk_bytes=100))
    assert len(chunks) > 3
    assert [chunk.startswith(b"\xef\xbb\xbf") for chunk in chunks] == [True] + [False] * (
        len(chunks) - 1
    )


# Safe and faithful ----------------------------------------------------------------------

TRIGGERS = ["=1+1", "+33 1 23", "-5", "@SUM(A1)", "\tTab", "\rReturn", " =x", "   +x", "  -x",
            " @x", "=", "-", '=HYPERLINK("http://evil","click")']  # fmt: skip
HARMLESS = ["Anne-Marie", "Jean-Luc", "O'Brien", " x", "x=1", "a+b", "mail@example.com",
            "'quoted", "Ñandú", " ", "x-", "\u00a0=nbsp"]  # fmt: skip


@pytest.mark.parametrize("value", TRIGGERS)
def test_formula_triggers_get_a_leading_apostrophe(app, make_person, value):
    make_person("eve", email="eve@example.com")
    set_user(app, "eve", first_name=value, surname=value, email=value)
    rows = as_dicts(run_export(app, columns="email"))
    assert rows["eve"]["First name"] == "'" + value
    assert rows["eve"]["Surname"] == "'" + value
    assert rows["eve"]["Email"] == "'" + value
    assert rows["admin"]["First name"] == "Intranet"


@pytest.mark.parametrize("value", HARMLESS)
def test_everything_else_is_left_alone(app, make_person, value):
    make_person("eve")
    set_user(app, "eve", first_name=value, surname=value, email=value)
    rows = as_dicts(run_export(app, columns="email"))
    assert rows["eve"]["First name"] == value
    assert rows["eve"]["Surname"] == value
    assert rows["eve"]["Email"] == value


def test_username_is_neutralised_too(app, make_person):
    make_person("-dash")
    make_person("mid-dash")
    rows = as_dicts(run_export(app))
    assert "'-dash" in rows and "mid-dash" in rows


def test_hyphenated_name_exact_bytes(app, make_person):
    make_person("am", first_name="Anne-Marie", surname="Dupont-Durand")
    assert f"am,Anne-Marie,Dupont-Durand,{user_id(app, 'am')}\r\n".encode() in run_export(app)


def test_newline_comma_and_quote_round_trip(app, make_person):
    make_person("q")
    awkward = 'Smith, "Jr."\nsecond line\r\nthird'
    set_user(app, "q", first_name='Ann, the "First"', surname=awkward, email="a,b@example.com")
    data = run_export(app, columns="email")
    rows = as_dicts(data)
    assert rows["q"]["First name"] == 'Ann, the "First"'
    assert rows["q"]["Surname"] == awkward
    assert rows["q"]["Email"] == "a,b@example.com"
    assert b'"Ann, the ""First"""' in data
    assert b'"Smith, ""Jr.""\nsecond line\r\nthird"' in data


SCRIPTS = {
    "cyr": ("Ярослава", "Чайковская"),
    "grk": ("Αλέξανδρος", "Παπαδόπουλος"),
    "cjk": ("美咲", "山田"),
    "ara": ("محمد", "العلي"),
    "heb": ("שרה", "כהן"),
    "hin": ("अनन्या", "शर्मा"),
    "tha": ("สมชาย", "ใจดี"),
    "emo": ("Zoë 🙂", "Ñúñez-Łukasz"),
    "cmb": ("e\u0301lodie", "Mu\u0308ller"),  # combining marks stay as they are
}


@pytest.mark.parametrize("bom", [False, True])
def test_names_in_several_scripts_round_trip(app, make_person, bom):
    for username, (first, surname) in SCRIPTS.items():
        make_person(username, first_name=first, surname=surname)
    data = run_export(app, bom=bom)
    rows = as_dicts(data)
    for username, (first, surname) in SCRIPTS.items():
        assert (rows[username]["First name"], rows[username]["Surname"]) == (first, surname)
    data.decode("utf-8")  # valid UTF-8 throughout


def test_null_and_non_text_cells_are_written_like_csv_writer():
    """A host whose text columns allow NULL (or hold numbers) takes the slow path."""
    plan = export._Plan(
        sql="",
        params=(),
        text_indexes=(0, 1, 2, 4),
        maps=((3, lambda cells: map(str.upper, cells)),),
        header=[],
    )
    rows = [("a", None, "=x", "y", None), ("b", "B", 12, "z", "b@example.com")]
    lines = export._Lines()
    writer = csv.writer(lines, lineterminator="\r\n")
    text = export._encode(rows, plan, writer, lines)
    assert text == "a,,'=x,Y,\r\nb,B,12,Z,b@example.com\r\n"


def reference_export(app, columns: tuple[str, ...]) -> bytes:
    """The export written the slow, obvious way: csv.writer over neutralised ORM values."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(export.ExportOptions(columns=columns).header)
    n = export.neutralise
    with app.app_context():
        query = sa.select(wsgi.User, sa.text("licenses_profile.area"), sa.text("pool"))
        query = query.join_from(
            wsgi.User, sa.table("licenses_profile", sa.column("user_id")),
            sa.text("licenses_profile.user_id = users.id"),
        ).add_columns(sa.text("block_reason")).order_by(wsgi.User.id)  # fmt: skip
        for user, area, pool, reason in wsgi.db.session.execute(query):
            cells = [n(user.username), n(user.first_name), n(user.surname), str(user.id)]
            optional = {
                "account_state": "Yes" if user.active else "No",
                "email": n(user.email or ""),
                "area": n(area),
                "pool": pool,
                "block_reason": export.BLOCK_REASON_LABELS.get(reason, ""),
                "created": user.created_at.strftime("%Y-%m-%d %H:%M"),
                "last_login": user.last_login_at.strftime("%Y-%m-%d %H:%M")
                if user.last_login_at
                else "",
            }
            writer.writerow(cells + [optional[name] for name in columns])
    return out.getvalue().encode("utf-8")


def test_fast_path_matches_csv_writer_on_random_awkward_names(app, make_person, install_license):
    """Batches joined in C must give exactly what csv.writer gives, for any names."""
    install_license(intranet=500)
    alphabet = [
        "a",
        "B",
        "-",
        "=",
        "+",
        "@",
        " ",
        "\t",
        "\r",
        "\n",
        ",",
        '"',
        "'",
        "é",
        "山",
        "🙂",
    ]
    rng = random.Random(7)
    for number in range(120):
        make_person(f"r{number:03d}", blocked=BLOCKED_BY_ADMIN if number % 7 == 0 else None)
    with app.app_context():
        for user in wsgi.db.session.scalars(sa.select(wsgi.User).where(wsgi.User.id > 1)):
            user.first_name = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
            user.surname = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
            user.email = rng.choice(["", "x@example.com", "-x@example.com", " =x", "a,b"])
            user.last_login_at = rng.choice([None, datetime(2026, 3, 1, 12, 34, 56)])
        wsgi.db.session.commit()
    columns = export.parse_columns("all")
    expected = reference_export(app, columns)
    for batch_rows in (1, 7, 2000):
        assert run_export(app, columns="all", batch_rows=batch_rows, chunk_bytes=50) == expected


def test_neutralise_unit():
    for value in TRIGGERS:
        assert export.neutralise(value) == "'" + value
    for value in [*HARMLESS, "", None, 5]:
        assert export.neutralise(value) == value


# Options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choices", "message"),
    [
        ({"columns": "email,phone"}, "Unknown column 'phone': choose from account_state,"),
        ({"columns": "all,phone"}, "Unknown column 'phone': choose from account_state,"),
        ({"state": "asleep"}, "Unknown state 'asleep': choose active, blocked or all."),
        ({"area": "mars"}, "Unknown area 'mars'. Areas are: primary, partners, suppliers."),
    ],
)
def test_bad_options_are_refused_in_one_sentence(app, choices, message):
    with app.app_context(), pytest.raises(export.ExportError) as refusal:
        export.options(**choices)
    assert str(refusal.value).startswith(message)


def test_file_name_carries_a_safe_site_name_and_the_date(app):
    from datetime import date

    app.config["LICENSES_SITE_NAME"] = "Intranet / Ünïcode:8443"
    with app.app_context():
        assert export.file_name(date(2026, 3, 4)) == "Intranet-Unicode-8443-people-2026-03-04.csv"
    app.config["LICENSES_SITE_NAME"] = "intranet.example.com"
    with app.app_context():
        assert export.file_name(date(2026, 3, 4)) == "intranet.example.com-people-2026-03-04.csv"


# The page -------------------------------------------------------------------------------

EXPORT_URL = "/admin/licenses/people/export"


@pytest.mark.parametrize(
    ("username", "status"),
    [("admin", 200), ("peopleadmin", 200), ("sysadmin", 403), ("jennifer", 403)],
)
def test_only_people_administrators_may_export(client, auth, accounts, username, status):
    auth.login(username)
    assert client.get(EXPORT_URL).status_code == status
    response = client.post(EXPORT_URL, data={"state": "all", "encoding": "utf-8"})
    assert response.status_code == status
    if status == 403:
        assert b"admin,Intranet" not in response.data


def test_anonymous_is_sent_to_login(client):
    for response in (client.get(EXPORT_URL), client.post(EXPORT_URL, data={"state": "all"})):
        assert response.status_code == 302
        assert "/login" in response.headers["Location"]


def test_people_page_links_to_the_export(client, auth, accounts):
    auth.login("peopleadmin")
    page = client.get("/admin/licenses/people").get_data(as_text=True)
    assert f'href="{EXPORT_URL}"' in page
    form = client.get(EXPORT_URL).get_data(as_text=True)
    for label in export.OPTIONAL_COLUMNS.values():
        assert label in form
    assert "UTF-8 with a byte-order mark" in form and "Every area" in form


def test_page_answers_a_streamed_csv_attachment(client, auth, accounts):
    auth.login("peopleadmin")
    response = client.post(
        EXPORT_URL,
        data={"columns": ["account_state", "email"], "state": "all", "encoding": "utf-8"},
    )
    assert response.status_code == 200
    assert response.is_streamed
    assert response.mimetype == "text/csv"
    assert "Content-Length" not in response.headers
    today = utcnow().strftime("%Y-%m-%d")
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="intranet.example.com-people-{today}.csv"'
    )
    assert response.data.startswith(
        b"Username,First name,Surname,ID,Account state,Email\r\n"
        b"admin,Intranet,Administrator,1,Yes,admin@example.com\r\n"
    )


def test_page_refuses_a_bad_choice_with_a_message(client, auth, accounts):
    auth.login("peopleadmin")
    response = client.post(
        EXPORT_URL, data={"columns": ["phone"], "state": "all", "encoding": "utf-8"}
    )
    assert response.status_code == 400
    assert "Nothing was exported" in response.get_data(as_text=True)
    response = client.post(EXPORT_URL, data={"state": "all", "area": "mars"})
    assert response.status_code == 400


CHOICES = [
    ({"state": "all", "encoding": "utf-8"}, []),
    (
        {"columns": ALL.split(","), "state": "all", "encoding": "utf-8-bom"},
        ["--columns", ALL, "--bom"],
    ),
    (
        {
            "columns": ["pool", "email"],
            "state": "blocked",
            "area": "partners",
            "encoding": "utf-8",
        },
        ["--columns", "email,pool", "--state", "blocked", "--area", "partners"],
    ),
    (
        {"columns": ["block_reason"], "state": "active", "area": "", "encoding": "utf-8-bom"},
        ["--columns", "block_reason", "--state", "active", "--bom"],
    ),
]


@pytest.mark.parametrize(("form", "options"), CHOICES)
def test_page_and_cli_give_the_same_bytes(
    app, client, auth, runner, accounts, people, tmp_path, form, options
):
    set_user(app, "ann", first_name='=Ann, "the"\nfirst', surname="Ærøe-Smith")
    auth.login("peopleadmin")
    page = client.post(EXPORT_URL, data=form)
    assert page.status_code == 200
    to_stdout = runner.invoke(args=["licenses", "export", *options])
    assert to_stdout.exit_code == 0, to_stdout.output
    assert to_stdout.stdout_bytes == page.data
    out = tmp_path / "people.csv"
    to_file = runner.invoke(args=["licenses", "export", *options, "--out", str(out)])
    assert to_file.exit_code == 0, to_file.output
    assert out.read_bytes() == page.data
    assert f"Wrote {len(parse(page.data)) - 1} people to {out}." in to_file.stderr
    assert not list(tmp_path.glob(".*.part"))


# The CLI --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--columns", "phone"], "Error: Unknown column 'phone': choose from"),
        (["--state", "asleep"], "Error: Unknown state 'asleep': choose active, blocked or all."),
        (
            ["--area", "mars"],
            "Error: Unknown area 'mars'. Areas are: primary, partners, suppliers.",
        ),
        (["--out", "/nonexistent-folder/x.csv"], "Error: The folder /nonexistent-folder does not"),
    ],
)
def test_cli_bad_options(runner, options, message):
    result = runner.invoke(args=["licenses", "export", *options])
    assert result.exit_code == 1
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1
    assert result.stdout_bytes == b""


def test_cli_reports_a_file_it_cannot_write(runner, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / ".out.csv.part").mkdir()  # stands in for a file that cannot be opened
    result = runner.invoke(args=["licenses", "export", "--out", str(folder / "out.csv")])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: Could not write {folder / 'out.csv'}: ")
    assert result.stderr.count("\n") == 1
    assert not (folder / "out.csv").exists()


def test_cli_shows_progress_when_writing_a_file(runner, make_person, tmp_path):
    for number in range(5):
        make_person(f"p{number}")
    out = tmp_path / "out.csv"
    result = runner.invoke(args=["licenses", "export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Exporting people" in result.stderr
    assert "Wrote 6 people to" in result.stderr
    assert result.stdout_bytes == b""
    assert out.read_bytes().count(b"\r\n") == 7


def test_cli_leaves_no_file_when_the_export_fails(app, runner, make_person, tmp_path, monkeypatch):
    make_person("p1")
    out = tmp_path / "out.csv"

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(export, "_encode", broken)
    result = runner.invoke(args=["licenses", "export", "--out", str(out)])
    assert result.exit_code != 0
    assert not out.exists()
    assert not list(tmp_path.glob("*out.csv*"))


# Streaming ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_failure_mid_stream_cuts_the_download_off_under_gunicorn(tmp_path, template_db):
    """Under gunicorn (as ``make run`` serves it) the response is chunked; a failure after
    the first chunk closes the connection without the last chunk, so the client sees an
    incomplete download, never a short file that looks complete."""
    path = tmp_path / "intranet.db"
    shutil.copy(template_db, path)
    with sqlite3.connect(path) as db:
        # 6,000 people, enough for a first chunk; the last one's name is not valid UTF-8,
        # so reading it fails half-way through the export, as a lost database would.
        db.executemany(
            "INSERT INTO users (id, username, first_name, surname, email, active, created_at,"
            " is_sysadmin, is_people_admin) VALUES (?, ?, 'First', 'Last', '', 0,"
            " '2026-01-01 00:00:00.000000', 0, 0)",
            [(i, f"user{i}") for i in range(2, 6002)],
        )
        db.executemany(
            "INSERT INTO licenses_profile (user_id, area, readonly, pool, exempt, source,"
            " created_at, username_key, first_name_key, surname_key, email_key) VALUES"
            " (?, 'primary', 0, 'intranet', 0, 'host', '2026-01-01 00:00:00.000000', ?,"
            " 'first', 'last', '')",
            [(i, f"user{i}") for i in range(2, 6002)],
        )
        db.execute("UPDATE users SET first_name = CAST(x'ff' AS TEXT) WHERE id = 6001")
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{path}",
        "FLASK_SECRET_KEY": "test-secret",
        "FLASK_WTF_CSRF_ENABLED": "false",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--workers", "1",
         "--bind", f"127.0.0.1:{port}", "wsgi:create_app()"],
        cwd=Path(wsgi.__file__).parent, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    connection = HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("gunicorn did not start")
                time.sleep(0.1)
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        connection.request("POST", "/login", "username=admin&password=test-password", form)
        login = connection.getresponse()
        login.read()
        assert login.status == 302
        cookie = login.headers["Set-Cookie"].split(";")[0]
        connection.request(
            "POST", "/admin/licenses/people/export", "state=all&encoding=utf-8",
            {**form, "Cookie": cookie},
        )  # fmt: skip
        response = connection.getresponse()
        assert response.status == 200
        assert response.headers["Transfer-Encoding"] == "chunked"
        with pytest.raises(IncompleteRead) as cut:
            response.read()
        assert cut.value.partial.startswith(b"Username,First name,Surname,ID\r\nadmin,")
        assert b"user2,First,Last,2\r\n" in cut.value.partial
        assert b"user6001," not in cut.value.partial
    finally:
        connection.close()
        server.terminate()
        _, errors = server.communicate(timeout=30)
    assert b"The People export failed part-way" in errors


def test_rows_come_in_batches_not_all_at_once(app, make_person, monkeypatch):
    """The database is read batch by batch as the stream is consumed."""
    for number in range(20):
        make_person(f"p{number:02d}")
    fetched = []
    original = export._batches

    def counting(*args):
        for rows in original(*args):
            fetched.append(len(rows))
            yield rows

    monkeypatch.setattr(export, "_batches", counting)
    with app.app_context():
        chunks = export.stream(export.options(), batch_rows=5, chunk_bytes=1)
        first = next(chunks)
        assert first.startswith(b"Username,")
        assert fetched == [5]
        rest = list(chunks)
    assert fetched == [5, 5, 5, 5, 1]
    assert len(rest) == 4
    assert rest[-1] == f"p19,P19,Tester,{user_id(app, 'p19')}\r\n".encode()


# PostgreSQL -----------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_export_matches_sqlite(postgres_url, app, vendor_key, tmp_path, make_person):
    """The same people give the same bytes on PostgreSQL (server-side cursor, to_char)."""
    make_person("ann", first_name="=Ann", surname='Ærøe, "Jr."')
    make_person("bob", area="partners", blocked=BLOCKED_BY_ADMIN)
    set_user(app, "ann", created_at=datetime(2024, 2, 29, 23, 59, 59), last_login_at=None)
    set_user(app, "bob", created_at=datetime(2025, 1, 2, 3, 4, 5))
    sqlite_bytes = run_export(app, columns="all", batch_rows=1)

    pg_app = wsgi.create_app(
        app_config(postgres_url, vendor_key), instance_path=str(tmp_path / "pg-instance")
    )
    result = pg_app.test_cli_runner().invoke(args=["init-db", "--password", "x"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        users = [
            {c.name: getattr(u, c.name) for c in wsgi.User.__table__.columns}
            for u in wsgi.db.session.scalars(sa.select(wsgi.User).where(wsgi.User.id > 1))
        ]
        profiles = [
            dict(row._mapping)
            for row in wsgi.db.session.execute(
                sa.text("SELECT * FROM licenses_profile WHERE user_id > 1")
            )
        ]
        admin_created = wsgi.db.session.get(wsgi.User, 1).created_at
    try:
        with pg_app.app_context():
            session = wsgi.db.session
            session.execute(
                sa.update(wsgi.User).where(wsgi.User.id == 1).values(created_at=admin_created)
            )
            session.execute(sa.insert(wsgi.User), users)
            profile_table = sa.Table(
                "licenses_profile", sa.MetaData(), autoload_with=wsgi.db.engine
            )
            session.execute(sa.insert(profile_table), profiles)
            session.commit()
            pg_bytes = export.export_bytes(export.options(columns="all"), batch_rows=1)
    finally:
        with pg_app.app_context():
            wsgi.dispose_engines()
    assert pg_bytes == sqlite_bytes


#: Names a COPY-written line must write exactly as csv.writer does.
TRICKY = [
    ("q1", 'The "Boss"', "O'Brien"),
    ("c1", "Smith, Jr.", "a,b,,c"),
    ("n1", "Line\nBreak", "two\r\nlines\r"),
    ("f1", "=SUM(A1)", "+1"),
    ("f2", "-Dash", "@mention"),
    ("f3", "  =spaced", " @x"),
    ("f4", "\tTab", "\rReturn"),
    ("f5", " plain space", "-"),
    ("s1", "Ярослава", "山田"),
    ("s2", "محمد", "Müller-Lüdenscheidt"),
    ("b1", "back\\slash", "\\N"),
    ("b2", "\\.", "end\\"),
    ("b3", "x", "\\."),
    ("\\.", "first", "cell"),
    ("e1", "", ""),
    ("v1", "vertical\vtab", "form\ffeed\bback"),
    # A trigger after a comma or a line break inside a cell is no cell start (the COPY
    # path's scan takes it for one, rewrites the row and must change nothing).
    ("p1", "a,=b", "x\n-y"),
    ("p2", 'say "=1"', "a,\tb"),
    ("r1", "\r", "\r"),
    ("=u1", "=", "@"),
    # Cells starting below "A" that are no formula: the COPY path's closer test leaves them.
    ("d1", "1st", '"Quoted" (x)'),
    ("d2", "!bang", "0"),
]


@pytest.mark.postgres
def test_postgres_copy_writes_the_same_bytes_as_the_ordinary_path(
    postgres_url, vendor_key, tmp_path
):
    """On PostgreSQL the database writes the lines (COPY); byte for byte what the ordinary
    path writes, for every column, filter and tricky name."""
    pg_app = wsgi.create_app(
        app_config(postgres_url, vendor_key), instance_path=str(tmp_path / "pg-instance")
    )
    result = pg_app.test_cli_runner().invoke(args=["init-db", "--password", "x"])
    assert result.exit_code == 0, result.output
    try:
        with pg_app.app_context():
            session = wsgi.db.session
            # Core inserts and a recount: no license is installed, and none is needed here.
            session.execute(
                sa.insert(wsgi.User),
                [
                    {
                        "username": username,
                        "first_name": first,
                        "surname": surname,
                        "email": {"e1": "", "b3": "\\."}.get(username, f"={username}@example.com"),
                        "active": number % 3 != 0,
                        "created_at": datetime(2024, 2, 29, 23, number, 59),
                        "last_login_at": None if number % 2 else datetime(2025, 1, 2, 3, 4, 5),
                    }
                    for number, (username, first, surname) in enumerate(TRICKY)
                ],
            )
            seats.recount(session, actor="test", now=utcnow())
            session.execute(
                sa.update(Profile)
                .where(Profile.username_key.in_([t[0] for t in TRICKY[1::4]]))
                .values(area="partners", pool="extranet")
            )
            session.commit()
            choices = [
                {"columns": "all"},
                {"columns": "all", "bom": True},
                {"columns": "all", "state": "active"},
                {"columns": "all", "state": "blocked", "area": "partners"},
                {},
                *({"columns": name} for name in export.OPTIONAL_COLUMNS),
            ]
            used_copy = []
            original = export._copy_chunks

            def spy(*args, **kwargs):
                used_copy.append(True)
                return original(*args, **kwargs)

            export._copy_chunks = spy
            try:
                for choice in choices:
                    opts = export.options(**choice)
                    ordinary = export.export_bytes(opts, database_copy=False, batch_rows=3)
                    for chunk_bytes in (1, 64 * 1024):
                        counted = []
                        copied = export.export_bytes(
                            opts, chunk_bytes=chunk_bytes, progress=counted.append
                        )
                        assert copied == ordinary, choice
                        assert sum(counted) == len(parse(ordinary)) - 1
            finally:
                export._copy_chunks = original
            assert len(used_copy) == 2 * len(choices)
            rows = as_dicts(export.export_bytes(export.options(columns="all")))
            assert rows["n1"]["First name"] == "Line\nBreak"
            assert rows["f3"]["First name"] == "'  =spaced"
            assert rows["b2"]["First name"] == "\\."
            assert rows["e1"]["Email"] == ""
    finally:
        with pg_app.app_context():
            wsgi.dispose_engines()


@pytest.mark.postgres
def test_postgres_copy_stopped_half_way_leaves_the_connection_usable(
    postgres_url, vendor_key, tmp_path
):
    """A download the browser abandons closes the generator mid-COPY: the pooled connection
    (the only one) must come back usable."""
    config = app_config(postgres_url, vendor_key)
    config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_size": 1, "max_overflow": 0}
    pg_app = wsgi.create_app(config, instance_path=str(tmp_path / "pg-instance"))
    result = pg_app.test_cli_runner().invoke(args=["init-db", "--password", "x"])
    assert result.exit_code == 0, result.output
    try:
        with pg_app.app_context():
            session = wsgi.db.session
            session.execute(
                sa.insert(wsgi.User),
                [{"username": f"u{n}", "first_name": "A", "surname": "B"} for n in range(50)],
            )
            session.commit()
            session.close()
            chunks = export.stream(export.options(columns="all"), chunk_bytes=1)
            assert next(chunks).startswith(b"Username,First name,Surname,ID,")
            chunks.close()
            with wsgi.db.engine.connect() as connection:
                assert connection.scalar(sa.text("SELECT count(*) FROM users")) == 51
    finally:
        with pg_app.app_context():
            wsgi.dispose_engines()


@pytest.mark.postgres
def test_postgres_copy_failing_half_way_raises_and_leaves_the_connection_usable(postgres_url):
    """A COPY that fails after some rows have come (here a division by zero at row 5,000)
    raises psycopg's own error from the export's reading loop, which has taken every
    result, so the connection takes the next statement."""
    import psycopg

    engine = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    raw = engine.raw_connection()
    try:
        connection = raw.driver_connection
        received = []
        with connection.cursor() as cursor:
            with pytest.raises(psycopg.errors.DivisionByZero):
                with cursor.copy(
                    "COPY (SELECT 1 / (5000 - x) FROM generate_series(1, 10000) x) TO STDOUT"
                ):
                    for data, rows in export._copy_data(connection, 1000):
                        assert data.count(b"\n") == rows
                        received.append(rows)
        assert 0 < sum(received) < 5000
        connection.rollback()
        assert connection.execute("SELECT 1").fetchone() == (1,)
    finally:
        raw.close()
        engine.dispose()

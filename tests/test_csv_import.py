"""CSV upload of people (csv_import.py): formats, preview, the apply rule, page and CLI."""

from __future__ import annotations

import html
import io
import re

import pytest
import sqlalchemy as sa
from conftest import PASSWORD, count_users, person_state, usage

import wsgi
from intranet_licenses import csv_import, seats
from intranet_licenses.models import AuditEvent, Profile, SeatCounter

PEOPLE = "/admin/licenses/people"
IMPORT = f"{PEOPLE}/import"


# Helpers --------------------------------------------------------------------------------


def page_text(response) -> str:
    """The visible text of a page, whitespace collapsed."""
    body = response.get_data(as_text=True)
    body = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", body, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def flat(text: str) -> str:
    return " ".join(text.split())


def upload(client, data: bytes, name: str = "people.csv"):
    return client.post(
        IMPORT,
        data={"csv_file": (io.BytesIO(data), name)},
        content_type="multipart/form-data",
    )


def token_of(response) -> str:
    assert response.status_code == 302, response.get_data(as_text=True)[:2000]
    location = response.headers["Location"]
    assert re.search(r"/people/import/[A-Za-z0-9_-]{32}$", location), location
    return location.rsplit("/", 1)[-1]


def page_import(client, data: bytes, name: str = "people.csv"):
    """Upload, preview and apply on the page: (preview text, result text, result status)."""
    token = token_of(upload(client, data, name))
    preview = client.get(f"{IMPORT}/{token}")
    assert preview.status_code == 200
    result = client.post(f"{IMPORT}/{token}/apply")
    return page_text(preview), page_text(result), result.status_code


def cli_import(runner, tmp_path, data: bytes, name: str = "people.csv", *, dry_run=False):
    """``flask licenses import-csv [--dry-run] FILE`` on a file holding ``data``."""
    path = tmp_path / name
    path.write_bytes(data)
    return runner.invoke(
        args=["licenses", "import-csv", *(["--dry-run"] if dry_run else []), str(path)]
    )


def cli_both(runner, tmp_path, data: bytes, name: str = "people.csv"):
    """--dry-run, then the real import: (dry-run result, import result)."""
    dry = cli_import(runner, tmp_path, data, name, dry_run=True)
    return dry, cli_import(runner, tmp_path, data, name)


def csv_bytes(lines: list[str], *, bom=False, crlf=False) -> bytes:
    end = "\r\n" if crlf else "\n"
    text = end.join(lines) + end
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")


def audit_rows(app, action):
    with app.app_context():
        query = sa.select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
        return [(e.subject, e.outcome, e.path, e.pool) for e in wsgi.db.session.scalars(query)]


def user_row(app, username):
    with app.app_context():
        user = wsgi.db.session.scalar(sa.select(wsgi.User).where(wsgi.User.username == username))
        if user is None:
            return None
        profile = wsgi.db.session.get(Profile, user.id)
        return (user.first_name, user.surname, user.email, user.active, profile.source)


def snapshot(app):
    """Everything an import may touch, to compare before and after."""
    with app.app_context():
        session = wsgi.db.session
        users = session.execute(
            sa.select(wsgi.User.id, wsgi.User.username, wsgi.User.active).order_by(wsgi.User.id)
        ).all()
        profiles = session.execute(
            sa.select(Profile.user_id, Profile.seat_pool).order_by(Profile.user_id)
        ).all()
        counters = session.execute(sa.select(SeatCounter.pool, SeatCounter.used)).all()
        return users, profiles, sorted(counters)


# The HR file of the "done when" ---------------------------------------------------

HR_FILE = csv_bytes(
    [
        "Username;First name;Surname;Email;Area",
        "ZOE.OBRIEN;Zoë;O'Brien;zoe.obrien@example.com;",
        "chloe;Chloé;D'Arcy-Lefèvre;chloe@example.com;Partners",
        "Jennifer;Jennifer;Lopez;jennifer.l@example.com;",
        "zoe.obrien;Zoe;OBrien;zoe2@example.com;",
        "noel;Noël;Ó Súilleabháin;noel@@example;",
        "jose;José;;jose@example.com;",
        "ana;Ana;Núñez;ana@example.com;moon",
        '"françois";"François";"L\'Hôpital";francois@example.com;primary',
    ],
    bom=True,
    crlf=True,
)

HR_PREVIEW = [
    "people.csv: UTF-8 with a byte-order mark, separated by semicolons, Windows (CRLF) line ends.",
    "Columns used: Username (username), First name (first name), Surname (surname), "
    "Email (email), Area (area).",
    "8 rows: 3 can be imported, 5 have problems.",
    "To create: 2 active in primary (intranet pool); 1 active in partners (extranet pool).",
    "Needs 2 intranet seats, 97 free.",
    "Needs 1 extranet seat, 20 free.",
    "Applying creates these 3 people; the 5 rows with problems will be skipped.",
]
HR_PROBLEMS = [
    (
        4,
        "Jennifer",
        "A person with the username 'jennifer' already exists (usernames are compared "
        "without regard to case).",
    ),
    (
        5,
        "zoe.obrien",
        "The username 'zoe.obrien' is already on line 2 of this file (usernames are "
        "compared without regard to case); only the first is used.",
    ),
    (6, "noel", "'noel@@example' is not a valid email address ("),
    (7, "jose", "The surname is missing."),
    (8, "ana", "Unknown area 'moon'. Areas are: primary, partners, suppliers."),
]
HR_RESULT = [
    "Imported: created 3 people: 2 active in primary (intranet pool); 1 active in partners "
    "(extranet pool).",
    "Skipped 5 rows with problems.",
]


def assert_hr_outcome(app, before_usage, via):
    assert user_row(app, "ZOE.OBRIEN") == (
        "Zoë",
        "O'Brien",
        "zoe.obrien@example.com",
        True,
        "csv",
    )
    assert user_row(app, "chloe") == ("Chloé", "D'Arcy-Lefèvre", "chloe@example.com", True, "csv")
    assert user_row(app, "françois") == (
        "François",
        "L'Hôpital",
        "francois@example.com",
        True,
        "csv",
    )
    assert person_state(app, "chloe") == (True, "partners", "extranet", None, "extranet")
    # the existing jennifer is untouched; no row with a problem was written
    assert user_row(app, "jennifer")[2] == "jennifer@example.com"
    for username in ("Jennifer", "zoe.obrien", "noel", "jose", "ana"):
        assert user_row(app, username) is None
    after = usage(app)
    assert after["intranet"] == before_usage["intranet"] + 2
    assert after["extranet"] == before_usage["extranet"] + 1
    assert sorted(audit_rows(app, "add")[-3:]) == [
        ("ZOE.OBRIEN", "ok", via, "intranet"),
        ("chloe", "ok", via, "extranet"),
        ("françois", "ok", via, "intranet"),
    ]


def test_the_hr_file_on_the_page(app, client, auth, accounts):
    before = usage(app)
    auth.login("peopleadmin")
    preview, result, status = page_import(client, HR_FILE)
    for line in HR_PREVIEW:
        assert line in preview
    for line_no, username, message in HR_PROBLEMS:
        assert f"{line_no} {username} {message}" in preview
    assert "5 rows with problems (skipped)" in preview
    assert status == 200
    for line in HR_RESULT:
        assert line in result
    for line_no, username, message in HR_PROBLEMS:
        assert f"{line_no} {username} {message}" in result
    assert "ZOE.OBRIEN, chloe, françois" in result
    assert_hr_outcome(app, before, "page")
    assert audit_rows(app, "import")[-1][:3] == ("people.csv", "ok", "page")


def test_the_hr_file_in_the_cli(app, runner, tmp_path, accounts):
    before = usage(app)
    dry = cli_import(runner, tmp_path, HR_FILE, dry_run=True)
    assert dry.exit_code == 0, dry.output
    lines = dry.output.splitlines()
    assert lines[: len(HR_PREVIEW) - 1] == HR_PREVIEW[:-1]
    problems = lines[len(HR_PREVIEW) - 1 : len(HR_PREVIEW) - 1 + len(HR_PROBLEMS)]
    for got, (line_no, username, message) in zip(problems, HR_PROBLEMS, strict=True):
        assert got.startswith(f"Line {line_no} ({username}): {message}")
    assert lines[-2:] == [HR_PREVIEW[-1], "Dry run: nothing was written."]
    assert usage(app) == before and user_row(app, "chloe") is None

    real = cli_import(runner, tmp_path, HR_FILE)
    assert real.exit_code == 0, real.output
    assert real.output.splitlines()[-2:] == HR_RESULT
    assert_hr_outcome(app, before, "cli")
    assert audit_rows(app, "import")[-1][:3] == ("people.csv", "ok", "cli")


# Formats ----------------------------------------------------------------------------------

M365_HEADER = (
    "User Name,First Name,Last Name,Display Name,Job Title,Department,Office Number,"
    "Office Phone,Mobile Phone,Fax,Alternate email address,Address,City,State or Province,"
    "ZIP or Postal Code,Country or Region"
)


def test_a_microsoft_365_template_file_imports_without_edits(app, runner, tmp_path):
    data = csv_bytes(
        [
            M365_HEADER,
            "amelie@fabrikam.example,Amélie,N'Diaye,Amélie N'Diaye,Engineer,R&D,1,2,3,4,"
            "boss@fabrikam.example,1 Main St,Lyon,,69001,France",
            "Bob.Ng@fabrikam.example,Bob,Ng,Bob Ng,Analyst,Finance,1,2,3,4,"
            "boss@fabrikam.example,1 Main St,Lyon,,69001,France",
        ]
    )
    dry, real = cli_both(runner, tmp_path, data, "m365.csv")
    assert dry.exit_code == 0, dry.output
    assert (
        "Columns used: User Name (sign-in name), First Name (first name), Last Name (surname), "
        "Display Name (display name). Ignored: Job Title, Department, Office Number, "
        "Office Phone, Mobile Phone, Fax, Alternate email address, Address, City, "
        "State or Province, ZIP or Postal Code, Country or Region." in dry.output
    )
    assert "2 rows: 2 can be imported, 0 have problems." in dry.output
    assert real.exit_code == 0, real.output
    assert "Imported: created 2 people: 2 active in primary (intranet pool)." in real.output
    # the username is the sign-in name before the @; the email is the sign-in name
    assert user_row(app, "amelie") == ("Amélie", "N'Diaye", "amelie@fabrikam.example", True, "csv")
    assert user_row(app, "Bob.Ng") == ("Bob", "Ng", "Bob.Ng@fabrikam.example", True, "csv")


def test_an_entra_bulk_create_file_with_its_version_line(app, client, auth, accounts):
    data = csv_bytes(
        [
            "version:v1.0",
            "Name [displayName] Required,User name [userPrincipalName] Required,"
            "Initial password [passwordProfile] Required,Block sign in (Yes/No) "
            "[accountEnabled] Required",
            "Siobhán Ní Bhriain,siobhan@contoso.example,Secret-1!,No",
            "Madonna,madonna@contoso.example,Secret-1!,No",
            "Paul Frost,paul@contoso.example,Secret-1!,Yes",
        ],
        crlf=True,
    )
    auth.login("peopleadmin")
    preview, result, _status = page_import(client, data, "entra.csv")
    assert "3 rows: 2 can be imported, 1 has problems." in preview
    assert "Ignored: Initial password [passwordProfile] Required." in preview
    assert "To create: 1 active in primary (intranet pool); 1 blocked in primary" in preview
    assert "Needs 1 intranet seat, 97 free." in preview
    assert "4 madonna The first name is missing." in preview  # line 4: the version line counts
    assert "Imported: created 2 people" in result
    assert user_row(app, "siobhan") == (
        "Siobhán Ní",
        "Bhriain",
        "siobhan@contoso.example",
        True,
        "csv",
    )
    assert person_state(app, "paul") == (False, "primary", "intranet", "admin", None)


def test_our_own_export_comes_back_in(app, runner, tmp_path):
    data = csv_bytes(
        [
            "Username,First name,Surname,ID,Account state,Email,Area,Pool,Block reason,"
            "Created,Last login",
            "rita,Rita,Ora,17,Yes,rita@example.com,partners,extranet,,2026-01-02 10:00,",
            "rolf,Rolf,'=Sum,18,Yes,rolf@example.com,primary,readonly,,2026-01-02 10:00,",
            "bea,Bea,Blocked,19,No,bea@example.com,primary,intranet,admin,2026-01-02 10:00,",
            "odd,Odd,Pool,20,Yes,odd@example.com,primary,extranet,,2026-01-02 10:00,",
            "what,What,State,21,Maybe,what@example.com,primary,intranet,,2026-01-02 10:00,",
        ],
        crlf=True,
    )
    before = usage(app)
    dry, real = cli_both(runner, tmp_path, data, "export.csv")
    assert dry.exit_code == 0, dry.output
    assert (
        "To create: 1 active in primary (readonly pool); 1 active in partners (extranet pool); "
        "1 blocked in primary (intranet pool)." in dry.output
    )
    assert (
        "Line 5 (odd): The pool 'extranet' does not go with the area 'primary' (people in "
        "primary draw on the intranet pool)." in dry.output
    )
    assert "Line 6 (what): Account state is 'Maybe'; use Yes or No." in dry.output
    assert real.exit_code == 0, real.output
    assert person_state(app, "rita") == (True, "partners", "extranet", None, "extranet")
    assert person_state(app, "rolf") == (True, "primary", "readonly", None, "readonly")
    assert person_state(app, "bea") == (False, "primary", "intranet", "admin", None)
    assert user_row(app, "rolf")[1] == "=Sum"  # the export's formula guard is taken off
    after = usage(app)
    assert (after["intranet"], after["extranet"], after["readonly"]) == (
        before["intranet"],
        before["extranet"] + 1,
        before["readonly"] + 1,
    )


def test_quoted_cells_blank_lines_and_line_numbers(app, runner, tmp_path):
    data = csv_bytes(
        [
            "email,first name,last name,notes",
            "",
            '"multi@example.com","Anne","Smith","Line',
            'Break"',
            ",,",
            "nobody,First,",
            "x@example.com,a,b,c,d",
        ]
    )
    dry = cli_import(runner, tmp_path, data, dry_run=True)
    out = dry.output
    assert "3 rows: 1 can be imported, 2 have problems." in out
    assert "Line 6 (nobody): The surname is missing. 'nobody' is not a valid email address" in out
    assert "Line 7: This row has more cells than the header has columns." in out
    assert user_row(app, "multi") is None  # dry run
    real = runner.invoke(args=["licenses", "import-csv", str(tmp_path / "people.csv")])
    assert real.exit_code == 0, real.output
    assert user_row(app, "multi")[:2] == ("Anne", "Smith")


def test_two_joined_exports_give_a_header_row_problem_not_a_person(app, client, auth, runner,
                                                                  tmp_path, accounts):  # fmt: skip
    first = csv_bytes(["Username,First name,Surname", "joined1,A,B"], bom=True, crlf=True)
    second = csv_bytes(["Username,First name,Surname", "joined2,C,D"], bom=True, crlf=True)
    dry, real = cli_both(runner, tmp_path, first + second)
    assert dry.exit_code == 0, dry.output
    assert "Line 3: This row looks like a header line (it names the columns again); were two " \
        "files joined?" in flat(dry.output)  # fmt: skip
    assert real.exit_code == 0, real.output
    assert user_row(app, "joined1") and user_row(app, "joined2")
    assert user_row(app, "\ufeffUsername") is None


def test_a_username_with_an_invisible_character_is_a_row_problem(app, runner, tmp_path):
    data = csv_bytes(["Username,First name,Surname", "zw\u200bsp,A,B", "ok.person,C,D"])
    dry, real = cli_both(runner, tmp_path, data)
    out = flat(dry.output)
    assert "Line 2 (zw\u200bsp): The username 'zw?sp' contains U+200B ZERO WIDTH SPACE" in out
    assert real.exit_code == 0, real.output
    assert user_row(app, "zw\u200bsp") is None and user_row(app, "ok.person")


def test_a_name_with_an_invisible_character_is_a_row_problem(app, runner, tmp_path):
    data = csv_bytes(["Username,First name,Surname", "rtl,A\u202eB,C"])
    dry = cli_import(runner, tmp_path, data, dry_run=True)
    assert "The first name contains U+202E RIGHT-TO-LEFT OVERRIDE" in flat(dry.output)


# Files that cannot be imported ------------------------------------------------------------

BAD_FILES = [
    (
        "Username,First name,Surname\nzoe,Zo\xeb,Smith\n".encode("cp1252"),
        "Line 2 of bad.csv is not UTF-8 text",
    ),
    (
        "Username,First name,Surname\nzoe,Zoë,Smith\n".encode("utf-16"),
        "bad.csv is saved as UTF-16 ('Unicode text'), not UTF-8.",
    ),
    (b"PK\x03\x04\x14\x00\x06\x00" + b"\x00" * 100, "bad.csv is an Excel workbook"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "bad.csv is not a CSV file: it contains binary data."),
    (
        b"First name,Surname,Phone\nZoe,Smith,123\n",
        "bad.csv has no username or email column. The first line must name the columns",
    ),
    (b"", "bad.csv is empty."),
    (b'Username,First name\n"zoe,Zoe\n', "Line 2 of bad.csv cannot be read as CSV"),
    (  # a header cell over the csv module's 131,072 characters: was a 500 and a traceback
        # (200,000, not megabytes: the test client keeps a body under 500 KB in memory)
        b"Username,First name,Surname," + b"x" * 200_000 + b"\r\nu1,A,B,c\r\n",
        "Line 1 of bad.csv, the header, cannot be read as CSV (field larger than field limit",
    ),
]


@pytest.mark.parametrize(("data", "message"), BAD_FILES)
def test_a_file_that_cannot_be_imported_gets_a_clear_message(
    app, client, auth, runner, tmp_path, accounts, data, message
):
    before = snapshot(app)
    dry, real = cli_both(runner, tmp_path, data, "bad.csv")
    for result in (dry, real):
        assert result.exit_code == 1
        assert message in flat(result.output)
    auth.login("peopleadmin")
    response = upload(client, data, "bad.csv")
    if response.status_code == 302 and "/people/import/" in response.headers["Location"]:
        response = client.get(response.headers["Location"])  # found while reading it all
    assert response.status_code == 302
    assert response.headers["Location"].endswith(IMPORT)
    assert message in page_text(client.get(IMPORT))
    assert snapshot(app) == before
    uploads = csv_import.uploads_folder(app.instance_path)
    assert list(uploads.iterdir()) == []  # the refused file is not kept


def test_a_file_over_the_size_limit(app, client, auth, runner, tmp_path, accounts):
    app.config["LICENSES_MAX_UPLOAD_BYTES"] = 1000
    data = csv_bytes(["Username,First name,Surname"] + [f"u{i},F,S" for i in range(200)])
    dry = cli_import(runner, tmp_path, data, "big.csv", dry_run=True)
    assert dry.exit_code == 1
    assert "big.csv is 1.7 KB; the largest file accepted is 1000 bytes." in dry.output
    auth.login("peopleadmin")
    response = upload(client, data, "big.csv")
    assert response.status_code == 302 and response.headers["Location"].endswith(IMPORT)
    assert "larger than 1000 bytes, the largest file accepted" in page_text(client.get(IMPORT))
    # far over the limit: refused while the request is read, before it is stored anywhere
    response = upload(client, data * 60, "huge.csv")
    assert response.status_code == 302 and response.headers["Location"].endswith(IMPORT)
    assert "The file is larger than 1000 bytes" in page_text(client.get(IMPORT))
    assert list(csv_import.uploads_folder(app.instance_path).iterdir()) == []
    assert count_users(app) == 4


def test_no_file_chosen(app, client, auth, accounts):
    auth.login("peopleadmin")
    response = client.post(IMPORT, data={}, content_type="multipart/form-data")
    assert response.status_code == 302
    assert "Nothing was uploaded. Choose a CSV file to upload." in page_text(client.get(IMPORT))


# Seats --------------------------------------------------------------------------------------

FIVE = csv_bytes(["Username,First name,Surname"] + [f"new{i},New,Person" for i in range(5)])


def test_fewer_free_seats_than_rows_refuses_the_whole_upload_on_the_page(
    app, client, auth, accounts, install_license
):
    install_license(intranet=5)  # 3 taken by the accounts: 2 free
    before = snapshot(app)
    auth.login("peopleadmin")
    token = token_of(upload(client, FIVE))
    preview = page_text(client.get(f"{IMPORT}/{token}"))
    assert "Needs 5 intranet seats, 2 free: 3 short." in preview
    assert (
        "Not enough free seats (needs 5 intranet seats, 2 free), so the upload will be "
        "refused as a whole and nothing will be written." in preview
    )
    assert "Apply: create" not in preview  # no Apply button
    assert snapshot(app) == before
    result = client.post(f"{IMPORT}/{token}/apply")  # posted anyway
    text = page_text(result)
    assert "Refused: nothing was imported." in text
    assert "No free seat in the intranet pool: 3 of 5 seats are in use and this needs 5 seats" in (
        text
    )
    assert snapshot(app) == before
    assert audit_rows(app, "import") == [("people.csv", "refused", "page", "intranet")]


def test_fewer_free_seats_than_rows_refuses_the_whole_upload_in_the_cli(
    app, runner, tmp_path, accounts, install_license
):
    install_license(intranet=5)
    before = snapshot(app)
    dry, real = cli_both(runner, tmp_path, FIVE)
    assert dry.exit_code == 1  # the import would be refused
    assert "Needs 5 intranet seats, 2 free: 3 short." in dry.output
    assert dry.output.splitlines()[-1] == "Dry run: nothing was written."
    assert real.exit_code == 1
    assert "Refused: nothing was imported. No free seat in the intranet pool" in real.output
    assert snapshot(app) == before
    assert audit_rows(app, "import") == [("people.csv", "refused", "cli", "intranet")]


def test_exactly_enough_seats(app, runner, tmp_path, accounts, install_license):
    install_license(intranet=8)
    _dry, real = cli_both(runner, tmp_path, FIVE)
    assert real.exit_code == 0, real.output
    assert usage(app)["intranet"] == 8


def test_seats_taken_between_the_check_and_the_write_roll_back_every_batch(
    app, accounts, install_license, monkeypatch, tmp_path
):
    """A batch already flushed is undone when a later batch finds its pool full."""
    install_license(intranet=10)
    monkeypatch.setattr(csv_import, "BATCH_SIZE", 2)
    before = snapshot(app)
    path = tmp_path / "five.csv"
    path.write_bytes(FIVE)

    with app.app_context():
        session = wsgi.db.session

        def someone_takes_the_seats(done):
            if done == 2:  # the first batch is flushed; now the pool fills up
                session.execute(
                    sa.update(SeatCounter).where(SeatCounter.pool == "intranet").values(used=10)
                )

        result = csv_import.apply(
            session,
            path,
            actor="tester",
            now=seats.utcnow(),
            path="test",
            progress=someone_takes_the_seats,
        )
        session.commit()
    assert not result.ok and result.refusals
    assert result.lines()[0] == "Refused: nothing was imported."
    assert snapshot(app) == before  # the first batch's two people are gone too
    assert audit_rows(app, "import") == [("five.csv", "refused", "test", "intranet")]


class _FailingInsert:
    """Make the Nth INSERT into the users table fail like a lost connection."""

    def __init__(self, n):
        self.n = n
        self.seen = 0

    def __call__(self, conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO USERS"):
            self.seen += 1
            if self.seen == self.n:
                raise sa.exc.OperationalError(statement, parameters, Exception("connection lost"))


@pytest.mark.parametrize("via", ["page", "cli"])
def test_a_database_error_half_way_leaves_the_data_as_before(
    app, client, auth, runner, tmp_path, accounts, monkeypatch, via
):
    monkeypatch.setattr(csv_import, "BATCH_SIZE", 2)
    before = snapshot(app)
    failing = _FailingInsert(2)  # the first batch is written, the second fails
    with app.app_context():
        engine = wsgi.db.engine
    sa.event.listen(engine, "before_cursor_execute", failing)
    try:
        if via == "page":
            auth.login("peopleadmin")
            _preview, text, status = page_import(client, FIVE)
            assert status == 200
        else:
            real = cli_import(runner, tmp_path, FIVE)
            assert real.exit_code == 1
            text = flat(real.output)
    finally:
        sa.event.remove(engine, "before_cursor_execute", failing)
    assert failing.seen == 2
    assert (
        "Nothing was imported: the database reported an error half-way (Exception), and "
        "everything the upload had written was undone, so the data is as it was before." in text
    )
    assert snapshot(app) == before
    assert audit_rows(app, "import") == [("people.csv", "error", via, None)]


# The stored upload --------------------------------------------------------------------------


def test_an_applied_upload_cannot_be_applied_twice(app, client, auth, accounts):
    auth.login("peopleadmin")
    token = token_of(upload(client, FIVE))
    assert client.post(f"{IMPORT}/{token}/apply").status_code == 200
    again = client.post(f"{IMPORT}/{token}/apply")
    assert again.status_code == 302
    assert "That upload is no longer available" in page_text(client.get(IMPORT))
    assert count_users(app) == 4 + 5


def test_a_double_click_on_apply_imports_once_and_the_others_say_it_is_gone(
    app, accounts, monkeypatch
):
    """Three Apply requests at once: one imports, two say the upload is no longer there."""
    import threading

    clients = [app.test_client() for _ in range(3)]
    for each in clients:
        each.post("/login", data={"username": "peopleadmin", "password": PASSWORD})
    token = token_of(upload(clients[0], FIVE))
    answered = threading.Semaphore(0)
    real_apply = csv_import.apply

    def slow_apply(*args, **kwargs):  # give the other clicks time to arrive meanwhile
        for _ in range(2):
            answered.acquire(timeout=3)
        return real_apply(*args, **kwargs)

    monkeypatch.setattr(csv_import, "apply", slow_apply)
    outcomes = [None] * 3

    def click(index):
        response = clients[index].post(f"{IMPORT}/{token}/apply")
        if response.status_code == 302:
            outcomes[index] = page_text(clients[index].get(IMPORT))
        else:
            outcomes[index] = page_text(response)
        answered.release()

    threads = [threading.Thread(target=click, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    imported = [o for o in outcomes if "Imported: created 5 people" in o]
    gone = [o for o in outcomes if "That upload is no longer available" in o]
    assert (len(imported), len(gone)) == (1, 2), outcomes
    assert count_users(app) == 4 + 5


def test_an_upload_belongs_to_who_uploaded_it(app, client, auth, accounts, make_person):
    make_person("otheradmin", people_admin=True)
    auth.login("peopleadmin")
    token = token_of(upload(client, FIVE))
    auth.logout()
    auth.login("otheradmin")
    assert client.get(f"{IMPORT}/{token}").status_code == 302
    assert client.post(f"{IMPORT}/{token}/apply").status_code == 302
    assert count_users(app) == 5
    for bad in ["../../secret_key", "x" * 32 + ".json", "short"]:
        assert client.get(f"{IMPORT}/{bad}").status_code in (302, 404)


def test_discarding_an_upload(app, client, auth, accounts):
    auth.login("peopleadmin")
    token = token_of(upload(client, FIVE))
    assert len(list(csv_import.uploads_folder(app.instance_path).iterdir())) == 2
    response = client.post(f"{IMPORT}/{token}/discard", follow_redirects=True)
    assert "The upload was discarded; nothing was imported." in page_text(response)
    assert list(csv_import.uploads_folder(app.instance_path).iterdir()) == []
    assert count_users(app) == 4


def test_the_people_page_links_to_the_import(client, auth, accounts):
    auth.login("peopleadmin")
    body = client.get(PEOPLE).get_data(as_text=True)
    assert f'href="{IMPORT}"' in body


def test_many_rows_in_several_batches(app, runner, tmp_path, install_license):
    install_license(intranet=3000)
    rows = [f"person{i},Given{i},Family{i},person{i}@example.com" for i in range(2100)]
    data = csv_bytes(["Username,First name,Surname,Email", *rows, "person7,Dup,Dup,"])
    path = tmp_path / "many.csv"
    path.write_bytes(data)
    result = runner.invoke(args=["licenses", "import-csv", str(path)])
    assert result.exit_code == 0, result.output
    assert "Imported: created 2,100 people: 2,100 active in primary (intranet pool)." in (
        result.output
    )
    assert "Line 2102 (person7): The username 'person7' is already on line 9" in result.output
    assert usage(app)["intranet"] == 2100
    assert count_users(app) == 2101
    with app.app_context():
        profiles = wsgi.db.session.scalar(
            sa.select(sa.func.count()).select_from(Profile).where(Profile.source == "csv")
        )
    assert profiles == 2100


# Who may import -----------------------------------------------------------------------------

TOKEN = "A" * 32
IMPORT_ROUTES = [
    ("get", IMPORT),
    ("post", IMPORT),
    ("get", f"{IMPORT}/{TOKEN}"),
    ("post", f"{IMPORT}/{TOKEN}/apply"),
    ("post", f"{IMPORT}/{TOKEN}/discard"),
]


@pytest.mark.parametrize(("method", "url"), IMPORT_ROUTES)
@pytest.mark.parametrize("username", ["sysadmin", "jennifer"])
def test_only_people_administrators_may_import(app, client, auth, accounts, method, url, username):
    auth.login(username)
    response = getattr(client, method)(url, data={"csv_file": (io.BytesIO(FIVE), "p.csv")})
    assert response.status_code == 403
    assert count_users(app) == 4


@pytest.mark.parametrize(("method", "url"), IMPORT_ROUTES)
def test_anonymous_users_are_sent_to_the_login(client, method, url):
    response = getattr(client, method)(url)
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_every_import_route_is_in_the_table(app):
    routes = {
        (method.lower(), rule.rule.replace("<token>", TOKEN))
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("licenses.import_")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert routes == set(IMPORT_ROUTES)


# PostgreSQL -----------------------------------------------------------------------------------


@pytest.fixture
def pg_app(postgres_url, vendor_key, make_license, tmp_path):
    """The demo app on a fresh PostgreSQL database (dropped afterwards), 10 intranet seats."""
    from conftest import demo_app_on

    app = demo_app_on(postgres_url, vendor_key, make_license(intranet=10), tmp_path / "instance")
    yield app
    with app.app_context():
        wsgi.dispose_engines()


@pytest.mark.postgres
def test_on_postgresql_seats_taken_by_another_worker_meanwhile_refuse_the_import(
    pg_app, tmp_path, monkeypatch
):
    path = tmp_path / "five.csv"
    path.write_bytes(FIVE)
    real_add_many = seats.add_many

    def another_worker_first(session, people, **kwargs):
        # Another connection admits 8 people and commits after our up-front check passed.
        with sa.orm.Session(wsgi.db.engine) as other:
            for i in range(8):
                seats.add_person(
                    other,
                    username=f"other{i}",
                    first_name="O",
                    surname="Ther",
                    email="",
                    actor="other",
                    now=seats.utcnow(),
                    path="test",
                )
            other.commit()
        return real_add_many(session, people, **kwargs)

    monkeypatch.setattr(seats, "add_many", another_worker_first)
    with pg_app.app_context():
        session = wsgi.db.session
        before = csv_import.preview(session, path, now=seats.utcnow())
        assert before.can_apply and "Needs 5 intranet seats, 10 free." in before.lines()
        result = csv_import.apply(session, path, actor="tester", now=seats.utcnow(), path="test")
        session.commit()
        assert result.lines()[:2] == [
            "Refused: nothing was imported.",
            "No free seat in the intranet pool: 8 of 10 seats are in use and this needs 5 "
            "seats. Request more licenses, or block or delete people who no longer need access.",
        ]
    assert usage(pg_app)["intranet"] == 8
    assert user_row(pg_app, "new0") is None
    assert audit_rows(pg_app, "import") == [("five.csv", "refused", "test", "intranet")]


@pytest.mark.postgres
def test_on_postgresql_a_failure_half_way_undoes_the_flushed_batches(
    pg_app, tmp_path, monkeypatch
):
    monkeypatch.setattr(csv_import, "BATCH_SIZE", 2)
    before = snapshot(pg_app)
    failing = _FailingInsert(3)
    with pg_app.app_context():
        engine = wsgi.db.engine
    sa.event.listen(engine, "before_cursor_execute", failing)
    try:
        result = cli_import(pg_app.test_cli_runner(), tmp_path, FIVE)
    finally:
        sa.event.remove(engine, "before_cursor_execute", failing)
    assert result.exit_code == 1
    assert "Nothing was imported: the database reported an error half-way" in result.output
    assert failing.seen == 3
    assert snapshot(pg_app) == before

    ok = cli_import(pg_app.test_cli_runner(), tmp_path, FIVE)  # and then it works
    assert ok.exit_code == 0, ok.output
    assert usage(pg_app)["intranet"] == 5


def test_tabs_and_other_header_spellings(app, runner, tmp_path):
    data = csv_bytes(["Given name\tFamily name\tE-mail", "Åsa\tÖberg-D'Souza\tasa@example.org"])
    dry = cli_import(runner, tmp_path, data, "hr.tsv", dry_run=True)
    assert dry.exit_code == 0, dry.output
    assert "separated by tabs, Unix (LF) line ends." in dry.output
    assert "Columns used: Given name (first name), Family name (surname), E-mail (email)." in (
        dry.output
    )
    assert cli_import(runner, tmp_path, data, "hr.tsv").exit_code == 0
    assert user_row(app, "asa") == ("Åsa", "Öberg-D'Souza", "asa@example.org", True, "csv")


def test_a_username_someone_adds_meanwhile_undoes_the_whole_import(
    app, accounts, tmp_path, monkeypatch
):
    monkeypatch.setattr(csv_import, "BATCH_SIZE", 2)
    path = tmp_path / "five.csv"
    path.write_bytes(FIVE)
    real_add_many = seats.add_many

    def someone_adds_new3_first(session, people, **kwargs):
        with sa.orm.Session(wsgi.db.engine) as other:
            seats.add_person(
                other,
                username="NEW3",
                first_name="N",
                surname="Ew",
                email="",
                actor="other",
                now=seats.utcnow(),
                path="test",
            )
            other.commit()
        return real_add_many(session, people, **kwargs)

    monkeypatch.setattr(seats, "add_many", someone_adds_new3_first)
    with app.app_context():
        session = wsgi.db.session
        result = csv_import.apply(session, path, actor="tester", now=seats.utcnow(), path="test")
        session.commit()
    assert result.lines() == [
        "Nothing was imported: the database refused a row as a duplicate, most likely a "
        "username someone added while the upload was being written. Everything the upload "
        "had written was undone. Preview the file again: it will show which rows are affected."
    ]
    assert [user_row(app, f"new{i}") for i in range(5)] == [None] * 5
    assert user_row(app, "NEW3") is not None
    assert usage(app)["intranet"] == 4
    monkeypatch.setattr(seats, "add_many", real_add_many)
    with app.app_context():
        again = csv_import.preview(wsgi.db.session, path, now=seats.utcnow())
    assert [p.line for p in again.tally.problems] == [5]

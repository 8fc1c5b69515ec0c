"""The License page, the System summary and the license commands (issue 3)."""

from __future__ import annotations

import html
import io
import re
import threading
from datetime import date
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import sqlalchemy as sa
from conftest import administrator_client, license_fields, statements_run
from markupsafe import Markup

import wsgi
from intranet_licenses.license_file import load_license, load_public_keys, sign_text
from intranet_licenses.models import AuditEvent, InstalledLicense

TODAY = date.today().isoformat()  # the app's clock (UTC) and the test's agree to the day


def text_of(response) -> str:
    page = re.sub(r"<[^>]+>", " ", response.get_data(as_text=True))
    return re.sub(r"\s+", " ", html.unescape(page))


@pytest.fixture
def sysadmin(auth, accounts):
    auth.login("sysadmin")
    return auth


def installed_count(app) -> int:
    with app.app_context():
        return wsgi.db.session.scalar(sa.select(sa.func.count()).select_from(InstalledLicense))


def test_the_license_page_says_valid_updated_and_expires(client, sysadmin):
    page = text_of(client.get("/admin/licenses/"))
    assert f"License is valid. Last updated on: {TODAY}. License expires: Never" in page
    assert "Registered to Test Corporation" in page
    assert "3 of 100 in use" in page  # sysadmin, peopleadmin, jennifer; admin is not counted
    assert "97 free" in page
    assert "0 of 20 in use" in page and "0 of 10 in use" in page


def test_view_all_lists_every_field_without_javascript(client, sysadmin, install_license):
    install_license(MAX_PUBLISH_LOCATIONS=7, CRM_ALLOWED="Yes")
    html = client.get("/admin/licenses/").get_data(as_text=True)
    details = html[html.index("<details") : html.index("</details>")]
    assert "<summary>View all</summary>" in details
    for key, value in [
        ("MAX_PUBLISH_LOCATIONS", "7"),
        ("CRM_ALLOWED", "Yes"),
        ("Host-Id", "TEST-1"),
    ]:
        assert f'<th scope="row">{key}</th><td>{value}</td>' in details


def test_install_by_upload(app, client, sysadmin, make_license):
    upload = (io.BytesIO(make_license(intranet=250).encode()), "new.lic")
    response = client.post(
        "/admin/licenses/install", data={"license_file": upload}, follow_redirects=True
    )
    page = text_of(response)
    assert "Done: The new license is installed." in page
    assert "3 of 250 in use" in page


def test_a_crlf_paste_installs(client, sysadmin, make_license):
    pasted = make_license(intranet=60).replace("\n", "\r\n")
    page = text_of(
        client.post(
            "/admin/licenses/install", data={"license_text": pasted}, follow_redirects=True
        )
    )
    assert "The new license is installed." in page and "3 of 60 in use" in page


def test_a_changed_value_is_refused_and_the_license_in_force_stays(
    app, client, sysadmin, make_license
):
    before = installed_count(app)
    tampered = make_license(intranet=60).replace("MAX_USERS: 60", "MAX_USERS: 600")
    page = text_of(
        client.post(
            "/admin/licenses/install", data={"license_text": tampered}, follow_redirects=True
        )
    )
    assert "Not done: License signature is not valid" in page
    assert "The license in force was not changed." in page
    assert "3 of 100 in use" in page
    assert installed_count(app) == before
    with app.app_context():
        last = wsgi.db.session.scalars(
            sa.select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1)
        ).one()
        assert (last.action, last.outcome, last.actor) == ("install", "refused", "sysadmin")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"license_text": "   "}, "Choose a license file or paste the license text."),
        (
            {"license_file": (io.BytesIO(b"\xff\xfe\x00junk"), "x.lic")},
            "The uploaded file is not a license: it is not UTF-8 text.",
        ),
        ({"license_text": "hello world"}, "License file is malformed"),
    ],
)
def test_bad_input_gets_a_clear_message(app, client, sysadmin, data, message):
    before = installed_count(app)
    page = text_of(client.post("/admin/licenses/install", data=data, follow_redirects=True))
    assert message in page
    assert "License is valid." in page
    assert installed_count(app) == before


def test_a_license_for_another_host_is_refused(client, sysadmin, make_license):
    page = text_of(
        client.post(
            "/admin/licenses/install",
            data={"license_text": make_license(**{"Host-Name": "*.other.org"})},
            follow_redirects=True,
        )
    )
    assert "not for this site (intranet.example.com)" in page


class _LicenseServer:
    """A tiny HTTP server on loopback that serves one license text (or an error)."""

    def __init__(self, body: bytes, status: int = 200):
        outer = self
        self.body, self.status = body, status

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                self.send_response(outer.status)
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/license.txt"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_fetch_a_new_license(app, client, sysadmin, make_license):
    served = _LicenseServer(make_license(intranet=75).encode())
    app.config["LICENSES_FETCH_URL"] = served.url
    try:
        page = text_of(client.get("/admin/licenses/"))
        assert "Fetch a new license" in page
        page = text_of(client.post("/admin/licenses/fetch", follow_redirects=True))
    finally:
        served.close()
    assert "A new license was fetched and installed." in page and "3 of 75 in use" in page


def test_a_failed_fetch_says_why_and_changes_nothing(app, client, sysadmin):
    served = _LicenseServer(b"not found", status=404)
    app.config["LICENSES_FETCH_URL"] = served.url
    before = installed_count(app)
    try:
        page = text_of(client.post("/admin/licenses/fetch", follow_redirects=True))
    finally:
        served.close()
    assert "the server answered 404" in page and "The license in force was not changed." in page
    app.config["LICENSES_FETCH_URL"] = served.url  # now nobody listens there
    page = text_of(client.post("/admin/licenses/fetch", follow_redirects=True))
    assert "Could not fetch a license from" in page and "refused" in page
    assert installed_count(app) == before


def test_the_summary_page_and_the_cli_show_the_database_figures(
    app, client, sysadmin, runner, make_person
):
    make_person("ext1", area="partners")
    make_person("ext2", area="suppliers")
    make_person("reader", readonly=True)
    make_person("gone", blocked="admin")
    with app.app_context():
        active = wsgi.db.session.scalar(
            sa.select(sa.func.count())
            .select_from(wsgi.User)
            .where(wsgi.User.active.is_(True), wsgi.User.username != "admin")
        )
    assert active == 6
    line = "Number of Users 6 (3 in intranet area), excluding the administrator account"
    page = text_of(client.get("/admin/licenses/summary"))
    assert line in page
    assert "Extranet pool: 2 of 20 in use" in page
    assert "Number of Documents 0 (0 including versions)" in page
    result = runner.invoke(args=["licenses", "status"])
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        f"License is valid. Last updated on: {TODAY}. License expires: Never",
        line,
    ]


def test_status_exits_non_zero_without_a_valid_license(app, runner):
    with app.app_context():
        wsgi.db.session.execute(sa.delete(InstalledLicense))
        wsgi.db.session.commit()
    result = runner.invoke(args=["licenses", "status"])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == "No license is installed."


def test_show_prints_the_installed_text_which_installs_again(app, runner, tmp_path):
    with app.app_context():
        stored = wsgi.db.session.scalars(sa.select(InstalledLicense.text)).all()[-1]
    result = runner.invoke(args=["licenses", "show"])
    assert result.exit_code == 0, result.output
    assert result.output == stored
    saved = tmp_path / "saved.lic"
    saved.write_text(result.output)
    again = runner.invoke(args=["licenses", "install", str(saved)])
    assert again.exit_code == 0 and again.output.startswith("License is valid."), again.output


def test_show_without_a_license_says_so(app, runner):
    with app.app_context():
        wsgi.db.session.execute(sa.delete(InstalledLicense))
        wsgi.db.session.commit()
    result = runner.invoke(args=["licenses", "show"])
    assert result.exit_code == 1
    assert result.output == "Error: No license is installed.\n"


def test_installing_a_changed_license_from_the_cli_names_the_problem(
    app, runner, make_license, tmp_path
):
    changed = tmp_path / "changed.lic"
    changed.write_text(make_license(intranet=5).replace("Test Corporation", "Test Corp"))
    result = runner.invoke(args=["licenses", "install", str(changed)])
    assert result.exit_code != 0
    assert "License signature is not valid" in result.output
    assert "The license in force was not changed." in result.output
    status = runner.invoke(args=["licenses", "status"])
    assert status.exit_code == 0 and "License is valid." in status.output


@pytest.mark.parametrize("content", [b"", b"\n \r\n", b"\xef\xbb\xbf"])
def test_installing_an_empty_file_from_the_cli_says_it_is_empty(app, runner, tmp_path, content):
    empty = tmp_path / "empty.lic"
    empty.write_bytes(content)
    result = runner.invoke(args=["licenses", "install", str(empty)])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {empty} is empty: it holds no license. The license in force was not changed.\n"
    )
    status = runner.invoke(args=["licenses", "status"])
    assert status.exit_code == 0 and "License is valid." in status.output


def test_keygen_issue_install(app, runner, tmp_path):
    private, public = tmp_path / "v.pem", tmp_path / "v.pub"
    result = runner.invoke(
        args=["licenses", "keygen", "--private-key", str(private), "--public-key", str(public)]
    )
    assert result.exit_code == 0, result.output
    assert private.stat().st_mode & 0o077 == 0
    again = runner.invoke(
        args=["licenses", "keygen", "--private-key", str(private), "--public-key", str(public)]
    )
    assert again.exit_code != 0 and "already exists" in again.output
    out = tmp_path / "issued.lic"
    result = runner.invoke(
        args=[
            "licenses", "issue", "--private-key", str(private), "--out", str(out),
            "--set", "MAX_USERS=42", "--set", "Expires=2030-06-30",
        ]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    issued = load_license(out.read_text(), load_public_keys([public.read_text()]))
    # Starts from the installed license's fields; --set overrides.
    assert issued.get("Registered-To") == "Test Corporation"
    assert issued.limit("MAX_USERS") == 42 and issued.get("Expires") == "2030-06-30"
    # Trusting the new key (rotation: both keys) lets it install.
    app.config["LICENSES_PUBLIC_KEYS"] = [*app.config["LICENSES_PUBLIC_KEYS"], str(public)]
    result = runner.invoke(args=["licenses", "install", str(out)])
    assert result.exit_code == 0, result.output
    assert "License expires: 2030-06-30" in result.output


def test_issue_signs_with_the_configured_vendor_key(app, runner, vendor_key, tmp_path):
    out = tmp_path / "next.lic"
    result = runner.invoke(args=["licenses", "issue", "--out", str(out), "--set", "MAX_USERS=9"])
    assert result.exit_code == 0, result.output
    assert load_license(out.read_text(), load_public_keys([str(vendor_key.public_path)]))
    app.config["LICENSES_VENDOR_PRIVATE_KEY"] = None
    result = runner.invoke(args=["licenses", "issue", "--out", str(out)])
    assert result.exit_code != 0
    assert "No private key" in result.output
    bad = runner.invoke(
        args=["licenses", "issue", "--private-key", str(vendor_key.private_path), "--out",
              str(out), "--set", "novalue"]
    )  # fmt: skip
    assert bad.exit_code != 0 and "is not KEY=VALUE" in bad.output
    out.unlink()
    signing = [
        "licenses",
        "issue",
        "--private-key",
        str(vendor_key.private_path),
        "--out",
        str(out),
    ]
    typo = runner.invoke(args=[*signing, "--set", "MAX_USER=90"])
    assert typo.exit_code != 0
    assert (
        "MAX_USER: a license has no such limit" in typo.output
        and "MAX_EXTRANET_USERS" in typo.output
    )
    assert not out.exists()
    # The two limits no pool draws on are license fields too (DESIGN.md).
    others = runner.invoke(
        args=[*signing, "--set", "MAX_PUBLISH_LOCATIONS=6", "--set", "MAX_EFORMS_PROJECTS=2"]
    )
    assert others.exit_code == 0, others.output
    issued = load_license(out.read_text(), load_public_keys([str(vendor_key.public_path)]))
    assert issued.get("MAX_PUBLISH_LOCATIONS") == "6" and issued.get("MAX_EFORMS_PROJECTS") == "2"
    out.unlink()
    # Any other registration field may be added.
    extra = runner.invoke(args=[*signing, "--set", "Support-Contact=ops@example.com"])
    assert extra.exit_code == 0, extra.output
    issued = load_license(out.read_text(), load_public_keys([str(vendor_key.public_path)]))
    assert issued.get("Support-Contact") == "ops@example.com"


@pytest.mark.parametrize(
    "setting",
    [
        "Expires=2020-02-30",
        "MAX_USERS=-5",
        "Registered-To=A\nB",
        "Signature=abc",
        "Host-Name=",
        "Foo:Bar=1",
    ],
)
def test_issue_refuses_a_value_the_format_does_not_allow_in_one_sentence(
    runner, vendor_key, tmp_path, setting
):
    out = tmp_path / "next.lic"
    args = ["licenses", "issue", "--private-key", str(vendor_key.private_path), "--out"]
    result = runner.invoke(args=[*args, str(out), "--set", setting])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output and "Cannot sign the license" in result.output
    assert "Nothing was written." in result.output and not out.exists()


def test_issue_to_a_folder_that_does_not_exist_says_so(runner, vendor_key, tmp_path):
    out = tmp_path / "missing" / "x.lic"
    args = ["licenses", "issue", "--private-key", str(vendor_key.private_path), "--out"]
    result = runner.invoke(args=[*args, str(out), "--set", "MAX_USERS=5"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert f"Cannot write {out}: No such file or directory." in result.output


def test_a_second_trusted_key_verifies(app, client, sysadmin, tmp_path):
    from intranet_licenses.license_file import generate_key_pair, load_private_key

    private_pem, public_pem = generate_key_pair()
    text = sign_text(license_fields(intranet=33), load_private_key(private_pem))
    app.config["LICENSES_PUBLIC_KEYS"] = [*app.config["LICENSES_PUBLIC_KEYS"], public_pem.decode()]
    page = text_of(
        client.post("/admin/licenses/install", data={"license_text": text}, follow_redirects=True)
    )
    assert "3 of 33 in use" in page


def test_every_form_on_the_page_carries_a_token_that_is_accepted(app, client, sysadmin):
    """The License page's forms are written out in the template (not rendered by WTForms):
    with CSRF on, each carries the token, and a form sent with it is accepted."""
    app.config["WTF_CSRF_ENABLED"] = True
    page = client.get("/admin/licenses/").get_data(as_text=True)
    forms = re.findall(r'<form method="post" action="/admin/licenses/.*?</form>', page, re.S)
    assert len(forms) == 2  # the Responsible person, the install (no fetch URL set)
    tokens = {re.search(r'name="csrf_token" value="([^"]+)"', form).group(1) for form in forms}
    assert len(tokens) == 1
    assert '<label for="email">Email address of the Responsible person</label>' in page
    assert '<label for="license_text">Or paste the license text</label>' in page
    saved = client.post(
        "/admin/licenses/responsible-person",
        data={"csrf_token": tokens.pop(), "email": "it-licenses@example.com"},
        follow_redirects=True,
    )
    assert "it-licenses@example.com" in text_of(saved) and "Done:" in text_of(saved)
    refused = client.post("/admin/licenses/responsible-person", data={"email": "x@example.com"})
    assert refused.status_code == 302  # no token: refused, nothing changed
    assert "x@example.com" not in text_of(client.get("/admin/licenses/"))


BOTH_DATABASES = pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)


@BOTH_DATABASES
def test_the_license_page_reads_its_lists_with_the_figures_in_one_statement(request, database):
    """The outbox's last and unsent messages and the license requests are read with the
    seat figures (json_rows): one statement besides the host's user load, and the page
    shows what the tables hold, dates, quotes and all."""
    from datetime import datetime

    from intranet_licenses.models import LicenseRequest, OutboxMessage

    app = request.getfixturevalue("app" if database == "sqlite" else "postgres_app")
    with app.app_context():
        session = wsgi.db.session

        def message(subject, *, created, sent_at=None, attempts=0, last_error=None):
            return OutboxMessage(
                kind="exceeded", recipient="it@example.com", subject=subject, text="",
                created_at=created, attempts=attempts, next_attempt_at=created,
                sent_at=sent_at, last_error=last_error,
            )  # fmt: skip

        session.add_all([
            message('Seats "full" & <more>', created=datetime(2026, 12, 1, 10, 0),
                    sent_at=datetime(2026, 12, 1, 10, 15, 30, 250000)),
            message("Waiting one", created=datetime(2026, 12, 2, 8, 5)),
            message("Failed one", created=datetime(2026, 12, 2, 9, 0), attempts=2,
                    last_error="421 try later"),
        ])  # fmt: skip
        for n, seats_ in enumerate((5, 7)):
            session.add(LicenseRequest(
                kind="add", seats=seats_, pool="extranet", note=f"Note {n}: “quoted”",
                requester_name="Sam Sysadmin", requester_email="sam@example.com",
                status="sent" if n else "cancelled", limits_before="",
                created_at=datetime(2026, 11, 20 + n, 14, 30), created_by="sysadmin",
            ))  # fmt: skip
        session.commit()
    statements = statements_run(app)
    response = administrator_client(app).get("/admin/licenses/")
    assert response.status_code == 200
    ours = [s for s in statements if "password_hash" not in s]  # not the host's user load
    assert len(ours) == 1 and "licenses_seat_counter" in ours[0], ours
    page = text_of(response)
    assert (
        'Last email sent: 2026-12-01 10:15 UTC to it@example.com: “Seats "full" & <more>”.' in page
    )
    assert "Waiting to be sent: 1 (oldest from 2026-12-02 08:05 UTC)." in page
    assert (
        "“Failed one” to it@example.com: 2 attempts, last error: 421 try later; "
        "next attempt after 2026-12-02 09:00 UTC." in page
    )
    rows = re.findall(r"<tr>\s*<td>(\d+)</td>\s*<td>([^<]+)</td>\s*<td>([^<]+)<br><small>"
                      r"([^<]+)</small></td>\s*<td>([^<]+)</td>\s*<td[^>]*>(\w+)</td>",
                      response.get_data(as_text=True))  # fmt: skip
    assert [row[1:] for row in rows] == [  # newest first
        ("2026-11-21 14:30", "7 more extranet seats", "Note 1: “quoted”", "Sam Sysadmin", "Sent"),
        ("2026-11-20 14:30", "5 more extranet seats", "Note 0: “quoted”", "Sam Sysadmin",
         "Cancelled"),
    ]  # fmt: skip


def _many_messages_and_requests(app, *, requests=60, unsent=70):
    """``unsent`` messages (kinds alternating, every third never tried) and ``requests``
    license requests all made at the same moment; the outbox state, the state of the
    request messages alone, and the request history, as the License page reads them."""
    from datetime import datetime, timedelta

    from intranet_licenses import license_requests, outbox
    from intranet_licenses.models import LicenseRequest, OutboxMessage

    base = datetime(2026, 12, 1, 9, 0)
    with app.app_context():
        session = wsgi.db.session
        for n in range(unsent):
            session.add(OutboxMessage(
                kind=("request", "exceeded")[n % 2], recipient="it@example.com",
                subject=f"unsent {n}", text="", created_at=base + timedelta(minutes=n),
                attempts=n % 3, next_attempt_at=base, last_error="e" if n % 3 else None,
            ))  # fmt: skip
        for n in range(requests):
            session.add(LicenseRequest(
                kind="add", seats=5 + n, pool="extranet", note=f"note {n}",
                requester_name="Sam", requester_email="s@example.com", status="sent",
                limits_before="", created_at=base, created_by="x",
            ))  # fmt: skip
        session.commit()
        return (outbox.state(session), outbox.state(session, kinds=("request",)),
                license_requests.history(session))  # fmt: skip


@BOTH_DATABASES
def test_long_lists_keep_their_order(request, database):
    """More than the page lists: the first 50 unsent by id, the newest 50 requests by id
    (all made at the same moment), whatever order the database aggregates them in."""
    app = request.getfixturevalue("app" if database == "sqlite" else "postgres_app")
    state, of_requests, history = _many_messages_and_requests(app)
    assert [m.subject for m in state.waiting] == [f"unsent {n}" for n in range(0, 50, 3)]
    unsent = [m.subject for m in state.waiting + state.failed]
    assert sorted(unsent) == sorted(f"unsent {n}" for n in range(50))
    assert [m.subject for m in of_requests.waiting] == [f"unsent {n}" for n in range(0, 70, 6)]
    assert [r.seats for r in history] == [5 + n for n in range(59, 9, -1)]


@pytest.mark.postgres
def test_psycopg_decodes_none_of_the_lists(postgres_app):
    """The lists come with each of the figures' rows (one per pool): they arrive as text,
    which json_rows decodes once, not as json, which psycopg would decode on every row."""
    import json

    from psycopg.types.json import set_json_loads

    _many_messages_and_requests(postgres_app, requests=3, unsent=3)
    decoded = []

    def loads(data):
        decoded.append(data)
        return json.loads(data)

    set_json_loads(loads)
    try:
        response = administrator_client(postgres_app).get("/admin/licenses/")
    finally:
        set_json_loads(json.loads)
    assert response.status_code == 200 and "6 more extranet seats" in text_of(response)
    assert decoded == []


@pytest.mark.parametrize(
    "name", ["csrf_token", 'tok"en', "a<b>&c", "it's", Markup("<b>&amp;"), "é\u2028"]
)
def test_the_csrf_field_is_what_markup_formatting_writes(app, name):
    """The small forms' CSRF field, written with an f-string of escaped values, has the
    bytes Markup's % operator gave (and is still Markup)."""
    from intranet_licenses import views

    app.config.update(WTF_CSRF_ENABLED=True, WTF_CSRF_FIELD_NAME=name)
    with app.test_request_context("/"):
        field = views._new_csrf_field()
        token = re.search(r'value="([^"]*)"', field).group(1)
        expected = Markup('<input type="hidden" name="%s" value="%s">') % (name, token)
    assert type(field) is Markup and str(field) == str(expected)

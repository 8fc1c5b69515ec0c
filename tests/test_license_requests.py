"""License requests (rule 8): the seat number, moves, the vendor email, history, fulfilment."""

from __future__ import annotations

import html
import re

import pytest
import sqlalchemy as sa

import wsgi
from intranet_licenses import license_requests, notifications, seats
from intranet_licenses.models import LicenseRequest, OutboxMessage, utcnow

VENDOR = "orders@vendor.example"
RESPONSIBLE = "it-licenses@example.com"


@pytest.fixture
def req_app(mail_app):
    mail_app.config["LICENSES_VENDOR_EMAIL"] = VENDOR
    with mail_app.app_context():
        notifications.set_responsible_person(
            wsgi.db.session, RESPONSIBLE, actor="t", now=utcnow(), path="test"
        )
        wsgi.db.session.commit()
    return mail_app


def stored(app):
    with app.app_context():
        return [
            (r.kind, r.seats, r.pool, r.from_pool, r.to_pool, r.status)
            for r in wsgi.db.session.scalars(sa.select(LicenseRequest).order_by(LicenseRequest.id))
        ]


def post_request(client, **data):
    fields = {
        "kind": "add",
        "seats": "10",
        "pool": "intranet",
        "from_pool": "extranet",
        "to_pool": "readonly",
        "note": "",
        "requester_name": "Sam Sysadmin",
        "requester_email": "sam@example.com",
    }
    fields.update(data)
    response = client.post("/admin/licenses/request", data=fields)
    response.close()  # as a WSGI server does: the email goes out after the response
    return response


def page_text(response) -> str:
    return response.get_data(as_text=True)


# The seat number: one check for the form and the CLI ----------------------------------------

BAD_SEATS = [
    ("5.0", "not a number of seats"),
    ("+5", "not a number of seats"),
    ("1_000", "not a number of seats"),
    ("1e3", "not a number of seats"),
    ("1,000", "not a number of seats"),
    ("5 0", "not a number of seats"),
    ("\uff15", "not a number of seats"),  # fullwidth 5
    ("\u0665\u0660", "not a number of seats"),  # Arabic-Indic 50
    ("-5", "not a number of seats"),
    ("0x10", "not a number of seats"),
    ("", "The number of seats is missing"),
    ("   ", "The number of seats is missing"),
    ("4", "at least 5 seats, not 4"),
    ("0", "at least 5 seats, not 0"),
    ("100001", "more than one request may ask for"),
    ("99999999999999999999999", "more than one request may ask for"),
]


@pytest.mark.parametrize(("value", "reason"), BAD_SEATS)
def test_parse_seats_refuses(app, value, reason):
    with app.app_context(), pytest.raises(license_requests.RequestError, match=reason):
        license_requests.parse_seats(value)


@pytest.mark.parametrize(
    ("value", "number"), [("5", 5), (" 12 ", 12), ("007", 7), ("100000", 100000)]
)
def test_parse_seats_takes_plain_digits(app, value, number):
    with app.app_context():
        assert license_requests.parse_seats(value) == number


@pytest.mark.parametrize(("value", "reason"), BAD_SEATS)
def test_the_form_refuses_a_bad_seat_number(req_app, auth, client, accounts, value, reason):
    auth.login("sysadmin")
    response = post_request(client, seats=value, submission_key="k1")
    assert response.status_code == 400
    text = page_text(response)
    assert "The request was not sent." in text and reason in text
    assert stored(req_app) == []


@pytest.mark.parametrize(("value", "reason"), BAD_SEATS)
def test_the_cli_refuses_a_bad_seat_number(req_app, runner, value, reason):
    result = runner.invoke(args=["licenses", "request", f"--seats={value}", "--pool", "intranet"])
    assert result.exit_code == 1
    assert "The request was not sent." in result.output and reason in result.output
    assert stored(req_app) == []


# Moves ---------------------------------------------------------------------------------------


def test_a_move_between_the_same_pool_is_refused(req_app, auth, client, accounts, runner):
    auth.login("sysadmin")
    response = post_request(
        client, kind="move", seats="5", from_pool="extranet", to_pool="extranet"
    )
    assert response.status_code == 400
    assert "only move between two different pools" in page_text(response)
    result = runner.invoke(
        args=[
            "licenses",
            "request",
            "--seats",
            "5",
            "--move-from",
            "readonly",
            "--move-to",
            "readonly",
        ]
    )
    assert result.exit_code == 1 and "two different pools" in result.output
    assert stored(req_app) == []


def test_a_move_larger_than_the_unused_seats_is_refused(
    req_app, auth, client, accounts, install_license, make_person
):
    install_license(extranet=8)
    for number in range(4):
        make_person(f"ext{number}", area="partners")
    auth.login("sysadmin")
    response = post_request(
        client, kind="move", seats="5", from_pool="extranet", to_pool="intranet"
    )
    assert response.status_code == 400
    assert "The extranet pool has 4 unused seats (4 of 8 in use): move at most 4" in page_text(
        response
    )
    assert stored(req_app) == []


def test_no_move_out_of_an_unlimited_pool(req_app, runner, install_license):
    install_license(readonly="Unlimited")
    result = runner.invoke(
        args=[
            "licenses",
            "request",
            "--seats",
            "5",
            "--move-from",
            "readonly",
            "--move-to",
            "intranet",
        ]
    )
    assert result.exit_code == 1 and "Unlimited" in result.output


def test_a_move_is_sent_and_fulfilled_when_the_limits_show_it(req_app, runner, install_license):
    result = runner.invoke(
        args=[
            "licenses",
            "request",
            "--seats",
            "5",
            "--move-from",
            "extranet",
            "--move-to",
            "readonly",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "move 5 seats from extranet to readonly" in result.output
    install_license(extranet=18, readonly=15)  # not all of it moved
    assert stored(req_app)[0][-1] == "sent"
    install_license(extranet=15, readonly=15)
    assert stored(req_app) == [("move", 5, None, "extranet", "readonly", "fulfilled")]


# Pre-filled from a refusal --------------------------------------------------------------------


def test_a_refusal_links_to_a_prefilled_request(req_app, auth, client, install_license):
    install_license(intranet=0)
    auth.login("admin")  # sysadmin and People administrator
    response = client.post(
        "/admin/licenses/people/add",
        data={"username": "newbie", "first_name": "N", "surname": "B", "area": "primary"},
        follow_redirects=True,
    )
    text = page_text(response)
    assert "No free seat in the intranet pool" in text
    link = re.search(r'<a href="([^"]+)">Request 5 more intranet seats</a>', text)
    assert link, text
    form = page_text(client.get(link.group(1).replace("&amp;", "&")))
    assert re.search(r'<input[^>]*name="seats"[^>]*value="5"', form)
    assert '<option selected value="intranet">' in form
    assert re.search(r'name="requester_name"[^>]*value="Intranet Administrator"', form)
    assert re.search(r'name="requester_email"[^>]*value="admin@example.com"', form)


# Sending -----------------------------------------------------------------------------------------


def test_the_vendor_gets_the_request_and_the_responsible_person_a_copy(
    req_app, smtp_server, auth, client, accounts
):
    auth.login("sysadmin")
    key = "form-1"
    response = post_request(
        client, seats=" 10 ", note="For the new branch office", submission_key=key
    )
    assert response.status_code == 302
    page = page_text(client.get(response.headers["Location"]))
    assert (
        "Request #1 is recorded and queued for orders@vendor.example: 10 more intranet seats."
        in page
    )
    assert f"A copy goes to the Responsible person ({RESPONSIBLE})" in page
    assert "10 more intranet seats" in page and ">Sent<" in page
    assert stored(req_app) == [("add", 10, "intranet", None, None, "sent")]

    by_recipient = {tuple(rcpt): message for _, rcpt, message in smtp_server.messages}
    assert set(by_recipient) == {(VENDOR,), (RESPONSIBLE,)}
    vendor = by_recipient[(VENDOR,)]
    assert vendor["Subject"] == (
        "License request #1 from intranet.example.com: 10 more intranet seats"
    )
    body = vendor.get_body(("plain",)).get_content()
    assert "Requested: 10 more intranet seats." in body
    assert "For the new branch office" in body
    assert "Registered-To: Test Corporation" in body and "Host-Id: TEST-1" in body
    assert "intranet: 3 of 100" in body and "readonly: 0 of 10" in body
    assert "Requested by: Sam Sysadmin <sam@example.com>" in body
    # The stdlib folds this long subject onto a continuation line; the parser keeps its space.
    assert by_recipient[(RESPONSIBLE,)]["Subject"].strip().startswith("Copy: License request #1")


def test_a_double_submission_records_one_request(req_app, smtp_server, auth, client, accounts):
    auth.login("sysadmin")
    first = post_request(client, submission_key="same-form")
    second = post_request(client, submission_key="same-form")
    assert first.status_code == second.status_code == 302
    page = page_text(client.get(second.headers["Location"]))
    assert "This request was sent already (request #1)" in page
    assert len(stored(req_app)) == 1
    assert [rcpt for _, rcpt, _ in smtp_server.messages].count([VENDOR]) == 1


def test_with_mail_down_the_request_waits_in_the_outbox(req_app, smtp_server, runner):
    smtp_server.stop()
    result = runner.invoke(args=["licenses", "request", "--seats", "5", "--pool", "extranet"])
    assert result.exit_code == 0, result.output
    with req_app.app_context():
        rows = wsgi.db.session.scalars(
            sa.select(OutboxMessage).where(OutboxMessage.kind == "request")
        ).all()
        assert len(rows) == 1 and rows[0].sent_at is None and rows[0].last_error
    smtp_server.start()
    result = runner.invoke(args=["licenses", "mail", "send-pending", "--retry-now"])
    assert result.exit_code == 0 and "Sent 2 messages." in result.output
    assert sorted(rcpt[0] for _, rcpt, _ in smtp_server.messages) == [RESPONSIBLE, VENDOR]


def test_without_a_vendor_address_nothing_is_stored(req_app, runner):
    req_app.config["LICENSES_VENDOR_EMAIL"] = None
    result = runner.invoke(args=["licenses", "request", "--seats", "5", "--pool", "intranet"])
    assert result.exit_code == 1 and "LICENSES_VENDOR_EMAIL" in result.output
    assert stored(req_app) == []


def test_an_expired_form_keeps_the_values_and_records_nothing(req_app, auth, client, accounts):
    auth.login("sysadmin")
    req_app.config["WTF_CSRF_ENABLED"] = True
    form = page_text(client.get("/admin/licenses/request"))
    # Sent after WTF_CSRF_TIME_LIMIT: a limit below the token's age (0 s) makes it so.
    req_app.config["WTF_CSRF_TIME_LIMIT"] = -1
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', form).group(1)
    key = re.search(r'name="submission_key" type="hidden" value="([^"]+)"', form).group(1)
    response = post_request(
        client, csrf_token=token, submission_key=key, seats="12", note="Slowly typed"
    )
    req_app.config["WTF_CSRF_TIME_LIMIT"] = 3600
    assert response.status_code == 400
    text = page_text(response)
    assert "The form expired while it was open, so nothing was sent." in text
    assert 'value="12"' in text and "Slowly typed" in text
    fresh = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', text).group(1)
    # (A token made in the same second as the old one reads the same; the point is that
    # the page carries a token that is accepted now, as the next POST shows.)
    assert stored(req_app) == []
    response = post_request(client, csrf_token=fresh, submission_key=key, seats="12")
    assert response.status_code == 302, page_text(response)
    assert stored(req_app) == [("add", 12, "intranet", None, None, "sent")]


# History: fulfilment and cancelling ------------------------------------------------------------


def test_an_install_that_covers_the_request_fulfils_it(req_app, runner, install_license):
    assert (
        runner.invoke(
            args=["licenses", "request", "--seats", "10", "--pool", "intranet"]
        ).exit_code
        == 0
    )
    install_license(intranet=105)
    assert stored(req_app)[0][-1] == "sent"
    install_license(intranet=110)
    assert stored(req_app)[0][-1] == "fulfilled"


def test_a_sysadmin_cancels_an_open_request(req_app, runner, auth, client, accounts):
    assert (
        runner.invoke(args=["licenses", "request", "--seats", "5", "--pool", "readonly"]).exit_code
        == 0
    )
    auth.login("sysadmin")
    response = client.post("/admin/licenses/request/1/acknowledge", follow_redirects=True)
    assert "Request #1 is marked as acknowledged" in page_text(response)
    response = client.post("/admin/licenses/request/1/cancel", follow_redirects=True)
    assert "Request #1 is cancelled." in page_text(response)
    assert stored(req_app)[0][-1] == "cancelled"
    response = client.post("/admin/licenses/request/1/cancel", follow_redirects=True)
    assert "Request #1 is cancelled; only an open request can change." in page_text(response)


@pytest.mark.parametrize("request_id", ["2147483648", "9223372036854775808"])
@pytest.mark.parametrize("action", ["cancel", "acknowledge"])
def test_an_id_past_the_integer_range_is_not_found(client, auth, accounts, request_id, action):
    auth.login("sysadmin")
    response = client.post(f"/admin/licenses/request/{request_id}/{action}")
    assert response.status_code == 404


# Who may ----------------------------------------------------------------------------------------

ROUTES = [
    ("get", "/admin/licenses/request"),
    ("post", "/admin/licenses/request"),
    ("post", "/admin/licenses/request/1/cancel"),
    ("post", "/admin/licenses/request/1/acknowledge"),
]


@pytest.mark.parametrize("username", ["peopleadmin", "jennifer"])
@pytest.mark.parametrize(("method", "url"), ROUTES)
def test_only_a_sysadmin_may(req_app, runner, auth, client, accounts, username, method, url):
    assert (
        runner.invoke(args=["licenses", "request", "--seats", "5", "--pool", "readonly"]).exit_code
        == 0
    )
    auth.login(username)
    response = getattr(client, method)(url, data={"seats": "5", "pool": "intranet", "kind": "add"})
    assert response.status_code == 403
    assert stored(req_app) == [("add", 5, "readonly", None, None, "sent")]


@pytest.mark.parametrize(("method", "url"), ROUTES)
def test_anonymous_users_go_to_login(client, method, url):
    response = getattr(client, method)(url)
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_the_refusal_link_is_only_for_a_sysadmin(req_app, auth, client, accounts, install_license):
    install_license(intranet=3)
    auth.login("peopleadmin")
    response = client.post(
        "/admin/licenses/people/add",
        data={"username": "newbie", "first_name": "N", "surname": "B", "area": "primary"},
        follow_redirects=True,
    )
    text = page_text(response)
    assert "No free seat in the intranet pool" in text and "Request 5 more" not in text


def test_the_over_limit_email_links_to_the_prefilled_form(req_app, smtp_server, install_license):
    install_license(intranet=0)
    with req_app.app_context():
        try:
            seats.add_person(
                wsgi.db.session,
                username="x",
                first_name="X",
                surname="Y",
                email="",
                actor="t",
                now=utcnow(),
                path="single",
            )
        except seats.SeatLimitExceeded:
            wsgi.db.session.commit()
    [(_, _, message)] = smtp_server.messages
    body = message.get_body(("plain",)).get_content()
    assert (
        "Request more licenses: https://intranet.example.com/admin/licenses/request?pool=intranet&seats=5"
        in body
    )


def test_the_summary_links_to_a_request_for_a_full_pool(
    req_app, auth, client, accounts, install_license
):
    install_license(intranet=3)
    auth.login("sysadmin")
    page = page_text(client.get("/admin/licenses/summary"))
    assert (
        '<a href="/admin/licenses/request?pool=intranet&amp;seats=5">Request licenses</a>' in page
    )
    assert "(intranet has no free seat)" in page


# Text a person can type: no control characters, one plain address -------------------------------

BAD_TEXT = [
    ({"note": "please\x00hurry"}, "The note contains a control character (U+0000"),
    ({"note": "bell\x07"}, "The note contains a control character (U+0007"),
    ({"requester_name": "Sam\x00"}, "Your name contains a control character (U+0000"),
    ({"submission_key": "k\x00"}, "The form arrived damaged"),
    ({"requester_email": "not an email"}, "'not an email' is not a valid email address"),
    ({"requester_email": "ιτ@παράδειγμα.δοκιμή"}, "has letters outside ASCII before the @"),
]


@pytest.mark.parametrize(("fields", "reason"), BAD_TEXT)
def test_the_form_refuses_bad_text_with_a_message(
    req_app, smtp_server, auth, client, accounts, fields, reason
):
    auth.login("sysadmin")
    response = post_request(client, **fields)
    assert response.status_code == 400
    page = html.unescape(page_text(response))
    assert "The request was not sent." in page and reason in page
    assert stored(req_app) == [] and smtp_server.messages == []


def test_a_note_keeps_its_line_breaks_and_tabs(req_app, auth, client, accounts):
    auth.login("sysadmin")
    assert post_request(client, note="line one\r\nline\ttwo").status_code == 302
    with req_app.app_context():
        note = wsgi.db.session.scalar(sa.select(LicenseRequest.note))
    assert note.replace("\r\n", "\n") == "line one\nline\ttwo"


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        ("--note=a\x00b", "The note contains a control character (U+0000"),
        ("--requester-email=not an email", "is not a valid email address"),
    ],
)
def test_the_cli_refuses_bad_text(req_app, runner, option, reason):
    args = ["licenses", "request", "--seats=5", "--pool", "intranet", option]
    result = runner.invoke(args=args)
    assert result.exit_code == 1, result.output
    assert "The request was not sent." in result.output and reason in result.output
    assert stored(req_app) == []

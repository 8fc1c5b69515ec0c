"""The Responsible person and the over-limit email (rules 6, 7, 10), at a real SMTP server."""

from __future__ import annotations

import multiprocessing
import socket
import threading
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from conftest import demo_app_on

import wsgi
from intranet_licenses import notifications, outbox, seats
from intranet_licenses.models import AuditEvent, Episode, OutboxMessage, Setting, utcnow

ADDRESS = "it-licenses@example.com"


# Helpers --------------------------------------------------------------------------------


def set_responsible(app, address=ADDRESS):
    with app.app_context():
        notifications.set_responsible_person(
            wsgi.db.session, address, actor="tester", now=utcnow(), path="test"
        )
        wsgi.db.session.commit()


def add(app, username, *, now=None, **kwargs):
    """Add a person as a view does: commit after a refusal too. True when added."""
    with app.app_context():
        session = wsgi.db.session
        try:
            seats.add_person(
                session,
                username=username,
                first_name="First",
                surname="Last",
                email=f"{username}@example.com",
                actor="tester",
                now=now or utcnow(),
                path=kwargs.pop("path", "single"),
                **kwargs,
            )
        except seats.SeatLimitExceeded:
            session.commit()
            return False
        session.commit()
        return True


def act(app, service, username, **kwargs):
    with app.app_context():
        session = wsgi.db.session
        user = seats.find_person(session, username)
        service(session, user, actor="tester", now=utcnow(), path="test", **kwargs)
        session.commit()


def outbox_rows(app):
    with app.app_context():
        return wsgi.db.session.scalars(sa.select(OutboxMessage).order_by(OutboxMessage.id)).all()


def exceeded_audit(app):
    with app.app_context():
        return [
            (e.pool, e.path, e.detail)
            for e in wsgi.db.session.scalars(
                sa.select(AuditEvent)
                .where(AuditEvent.action == "exceeded")
                .order_by(AuditEvent.id)
            )
        ]


def responsible(app):
    with app.app_context():
        return notifications.responsible_person(wsgi.db.session)


def body(message) -> str:
    return message.get_body(("plain",)).get_content()


def html(message) -> str:
    return message.get_body(("html",)).get_content()


# The message at a real SMTP server ---------------------------------------------------------


def test_the_email_reaches_one_recipient_with_subject_and_body(
    mail_app, smtp_server, install_license
):
    app = mail_app
    set_responsible(app)
    install_license(intranet=2)
    assert add(app, "one") and add(app, "two")
    assert smtp_server.messages == []  # reaching the limit exactly sends nothing
    assert not add(app, "three")

    assert len(smtp_server.messages) == 1
    sender, recipients, message = smtp_server.messages[0]
    assert recipients == [ADDRESS]
    assert message["To"] == ADDRESS and message["Cc"] is None and message["Bcc"] is None
    assert sender == "intranet@example.com"
    assert message["Subject"] == (
        "[intranet.example.com] License limit exceeded: intranet pool (2 of 2 seats in use)"
    )
    text = body(message)
    assert "The user license limit of intranet.example.com was exceeded." in text
    assert "Intranet pool: 2 in use, limit 2." in text
    assert "1 person was refused for lack of a seat (through adding one person): three." in text
    assert "Request more licenses: https://intranet.example.com/admin/licenses/" in text
    assert "block or delete people who no longer need access: " in text
    assert "https://intranet.example.com/admin/licenses/people" in text
    # No other personal data: no email addresses or names of people.
    assert "three@example.com" not in text and "First" not in text
    assert "one" not in text.split("Intranet pool")[1].split("What to do")[0].replace("one ", "")
    page = html(message)
    assert 'href="https://intranet.example.com/admin/licenses/people"' in page
    assert "three" in page
    rows = outbox_rows(app)
    assert [(r.recipient, r.attempts, r.last_error) for r in rows] == [(ADDRESS, 1, None)]
    assert rows[0].sent_at is not None


def test_external_url_sets_the_links(mail_app, smtp_server, install_license):
    mail_app.config["LICENSES_EXTERNAL_URL"] = "http://intranet.local:8080/"
    set_responsible(mail_app)
    install_license(intranet=0)
    assert not add(mail_app, "nobody")
    text = body(smtp_server.messages[0][2])
    assert "http://intranet.local:8080/admin/licenses/people" in text


def test_a_sender_with_a_display_name(mail_app, smtp_server, install_license):
    mail_app.config["MAIL_DEFAULT_SENDER"] = ("Intranet", "intranet@example.com")
    set_responsible(mail_app)
    install_license(intranet=0)
    assert not add(mail_app, "nobody")
    sender, _, message = smtp_server.messages[0]
    assert (
        sender == "intranet@example.com" and message["From"] == "Intranet <intranet@example.com>"
    )
    assert message["Message-ID"].endswith("@example.com>")


def test_300_refused_additions_send_one_email_and_a_new_episode_sends_another(
    mail_app, smtp_server, install_license
):
    app = mail_app
    set_responsible(app)
    install_license(intranet=1)
    assert add(app, "holder")
    for number in range(300):
        assert not add(app, f"refused{number}")
    assert len(smtp_server.messages) == 1
    assert len(outbox_rows(app)) == 1

    # Page views and a restart (a new app on the same database) send nothing more.
    other = wsgi.create_app(dict(app.config), instance_path=app.instance_path)
    assert not add(other, "after-restart")
    with other.app_context():
        wsgi.dispose_engines()
    assert len(smtp_server.messages) == 1

    # A free seat ends the episode; filling it exactly sends nothing; exceeding sends one.
    act(app, seats.block, "holder")
    assert add(app, "newcomer")
    assert len(smtp_server.messages) == 1
    assert not add(app, "late")
    assert len(smtp_server.messages) == 2
    assert "late" in body(smtp_server.messages[1][2])


def test_a_refusal_that_finds_the_episode_open_writes_only_its_audit_row(
    mail_app, smtp_server, install_license
):
    """The statement that finds the pool full also finds the episode open: nothing to decide."""
    app = mail_app
    set_responsible(app)
    install_license(intranet=1)
    assert add(app, "holder")
    assert not add(app, "first-refused")  # opens the episode: one email
    statements = []
    with app.app_context():
        engine = wsgi.db.engine

        def record(conn, cursor, statement, *args):
            statements.append(" ".join(statement.split()))

        sa.event.listen(engine, "before_cursor_execute", record)
        try:
            assert not add(app, "second-refused")
        finally:
            sa.event.remove(engine, "before_cursor_execute", record)
    assert [s for s in statements if "licenses_episode" in s and not s.startswith("SELECT")] == []
    assert len([s for s in statements if s.startswith("INSERT INTO licenses_audit")]) == 1
    assert len(smtp_server.messages) == 1
    with app.app_context():
        refusal = wsgi.db.session.scalars(
            sa.select(AuditEvent).where(AuditEvent.subject == "second-refused")
        ).one()
        assert (refusal.action, refusal.outcome, refusal.pool) == ("add", "refused", "intranet")

    # An event that did not see the episode open (here, one reported without a reading)
    # is still decided at commit: the episode is open, so no second email.
    with app.app_context():
        notifications.exceeded(
            wsgi.db.session, pool="intranet", trigger="refused", path="test", now=utcnow()
        )
        wsgi.db.session.commit()
    assert len(smtp_server.messages) == 1


def test_a_bulk_upload_names_up_to_20_and_counts_all(mail_app, smtp_server, install_license):
    app = mail_app
    set_responsible(app)
    install_license(intranet=0)
    with app.app_context():
        session = wsgi.db.session
        names = [f"csv{number:02d}" for number in range(25)]
        for name in names:  # the seat service reports each refused row ...
            try:
                seats.add_person(
                    session,
                    username=name,
                    first_name="F",
                    surname="S",
                    email="",
                    actor="t",
                    now=utcnow(),
                    path="csv",
                    source="csv",
                )
            except seats.SeatLimitExceeded:
                pass
        # ... and the import reports its totals: one message, counted once.
        notifications.exceeded(
            session,
            pool="intranet",
            trigger="refused",
            path="csv",
            usernames=names[:20],
            count=25,
            now=utcnow(),
        )
        session.commit()
    assert len(smtp_server.messages) == 1
    text = body(smtp_server.messages[0][2])
    assert "25 people were refused for lack of a seat (through a CSV upload): " in text
    assert "csv00, csv01" in text and "csv19 and 5 more." in text
    assert "csv20" not in text


def test_a_sync_leaving_people_waiting_sends_one(mail_app, smtp_server, install_license):
    app = mail_app
    set_responsible(app)
    install_license(extranet=1)
    assert add(app, "partner", area="partners")
    for number in range(5):
        add(app, f"waiter{number}", area="partners", wait_when_full=True, path="directory")
    assert len(smtp_server.messages) == 1
    text = body(smtp_server.messages[0][2])
    assert "Extranet pool: 1 in use, limit 1, 1 waiting for a license." in text
    assert "1 person was left waiting for a license (through a directory sync): waiter0." in text


def test_installing_a_license_below_usage_sends_one(mail_app, smtp_server, install_license):
    app = mail_app
    set_responsible(app)
    for name in ("a", "b", "c"):
        assert add(app, name)
    install_license(intranet=3)  # exactly at the limit: nothing
    assert smtp_server.messages == []
    install_license(intranet=2)
    assert len(smtp_server.messages) == 1
    text = body(smtp_server.messages[0][2])
    assert "Intranet pool: 3 in use, limit 2." in text
    assert "allows 2 seats while 3 are in use: 1 more than allowed" in text
    install_license(intranet=1)  # the same episode
    assert len(smtp_server.messages) == 1
    install_license(intranet=10)  # a free seat again: the episode ends
    with app.app_context():
        assert wsgi.db.session.get(Episode, "intranet").open is False
    install_license(intranet=2)
    assert len(smtp_server.messages) == 2


def test_an_invalid_license_is_noticed_once_by_the_page(
    mail_app, smtp_server, auth, client, accounts
):
    app = mail_app
    set_responsible(app)
    auth.login("sysadmin")
    assert client.get("/admin/licenses/").status_code == 200
    assert smtp_server.messages == []
    app.config["LICENSES_SITE_NAME"] = "elsewhere.example.org"  # the license no longer fits
    for _ in range(3):
        response = client.get("/admin/licenses/")
        assert response.status_code == 200
        response.close()
    assert len(smtp_server.messages) == 1
    text = body(smtp_server.messages[0][2])
    assert "the license in force is no longer valid" in text.lower()
    assert "Intranet pool: 3 in use, limit 0." in text


def test_an_expired_license_is_told_once(mail_app, smtp_server, install_license, runner):
    app = mail_app
    set_responsible(app)
    install_license(Expires="2026-12-31")
    assert add(app, "worker", now=datetime(2026, 12, 30))
    later = datetime(2027, 1, 1, 8, 0)
    for _ in range(3):
        with app.app_context():
            if notifications.notice_license_state(wsgi.db.session, later):
                wsgi.db.session.commit()
    assert len(smtp_server.messages) == 1
    text = body(smtp_server.messages[0][2])
    assert "License expired on 2026-12-31" in text
    # The CLI reads the license too and tells nobody again.
    runner.invoke(args=["licenses", "status"])
    assert len(smtp_server.messages) == 1


def test_an_expiry_names_a_pool_whose_episode_was_already_open(
    mail_app, smtp_server, install_license
):
    app = mail_app
    set_responsible(app)
    install_license(Expires="2026-12-31", intranet=1, extranet=5)
    day = datetime(2026, 12, 30)
    assert add(app, "holder", now=day)
    assert add(app, "partner", area="partners", now=day)
    assert not add(app, "refused", now=day)  # opens the intranet episode: one email
    assert len(smtp_server.messages) == 1
    with app.app_context():
        assert notifications.notice_license_state(wsgi.db.session, datetime(2027, 1, 1))
        wsgi.db.session.commit()
    assert len(smtp_server.messages) == 2
    expiry = smtp_server.messages[1][2]
    assert expiry["Subject"].endswith("License limit exceeded: extranet, intranet pools")
    assert "Intranet pool: 1 in use, limit 0." in body(expiry)
    assert "License expired on 2026-12-31" in body(expiry)


def test_the_cli_status_notices_an_invalid_license(mail_app, smtp_server, runner, make_person):
    make_person("someone")
    set_responsible(mail_app)
    mail_app.config["LICENSES_SITE_NAME"] = "elsewhere.example.org"
    result = runner.invoke(args=["licenses", "status"])
    assert result.exit_code == 1
    result = runner.invoke(args=["licenses", "status"])
    assert len(smtp_server.messages) == 1


def test_a_refusal_on_the_people_page_is_mailed_after_the_response(
    mail_app, smtp_server, auth, client, accounts, install_license
):
    set_responsible(mail_app)
    install_license(intranet=3)  # sysadmin, peopleadmin, jennifer
    auth.login("peopleadmin")
    response = client.post(
        "/admin/licenses/people/add",
        data={"username": "newbie", "first_name": "N", "surname": "B", "area": "primary"},
        follow_redirects=True,
    )
    assert "No free seat in the intranet pool" in response.get_data(as_text=True)
    response.close()
    assert len(smtp_server.messages) == 1
    assert "newbie" in body(smtp_server.messages[0][2])
    assert "(through the People page)" in body(smtp_server.messages[0][2])


# Nothing lost when the mail server is down -------------------------------------------------


def test_with_the_server_down_nothing_is_lost_and_send_pending_delivers_once(
    mail_app, smtp_server, install_license, runner, auth, client, accounts
):
    app = mail_app
    set_responsible(app)
    install_license(intranet=3)
    smtp_server.stop()
    assert not add(app, "refused")
    rows = outbox_rows(app)
    assert len(rows) == 1
    assert rows[0].sent_at is None and rows[0].attempts == 1
    assert "Connection refused" in rows[0].last_error or "Errno" in rows[0].last_error
    assert rows[0].next_attempt_at > rows[0].created_at

    auth.login("sysadmin")
    page = client.get("/admin/licenses/").get_data(as_text=True)
    assert "Not sent yet (1)" in page and "last error:" in page

    # Still down: the cron run fails, says so, and keeps the message.
    result = runner.invoke(args=["licenses", "mail", "send-pending", "--retry-now"])
    assert result.exit_code == 1
    assert "could not be sent" in result.output and "retried later" in result.output
    assert outbox_rows(app)[0].attempts == 2

    smtp_server.start()
    result = runner.invoke(args=["licenses", "mail", "send-pending"])
    assert result.exit_code == 0 and "Sent 0 messages." in result.output  # back-off
    with app.app_context():
        wsgi.db.session.execute(
            sa.update(OutboxMessage).values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
        wsgi.db.session.commit()
    result = runner.invoke(args=["licenses", "mail", "send-pending"])
    assert result.exit_code == 0 and "Sent 1 message." in result.output
    result = runner.invoke(args=["licenses", "mail", "send-pending", "--retry-now"])
    assert "Sent 0 messages." in result.output
    assert len(smtp_server.messages) == 1
    assert smtp_server.messages[0][1] == [ADDRESS]
    page = client.get("/admin/licenses/").get_data(as_text=True)
    assert "Last email sent:" in page and "Not sent yet" not in page


def test_a_refusing_mail_server_leaves_the_message_with_its_error(
    mail_app, smtp_server, install_license
):
    smtp_server.sink.refuse = "550 5.1.1 No such mailbox"
    set_responsible(mail_app)
    install_license(intranet=0)
    assert not add(mail_app, "x")
    row = outbox_rows(mail_app)[0]
    assert row.sent_at is None and "No such mailbox" in row.last_error
    assert smtp_server.messages == []


def test_a_silent_mail_server_times_out(mail_app, install_license):
    """A server that accepts the connection and never answers: the timeout applies."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        mail_app.config.update(MAIL_PORT=listener.getsockname()[1], LICENSES_MAIL_TIMEOUT=0.5)
        wsgi.mail.init_app(mail_app)
        set_responsible(mail_app)
        install_license(intranet=0)
        assert not add(mail_app, "x")
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()
    row = outbox_rows(mail_app)[0]
    assert row.sent_at is None and "timed out" in row.last_error


def test_a_claimed_message_is_left_to_its_sender_until_the_claim_expires(
    mail_app, smtp_server, install_license
):
    app = mail_app
    set_responsible(app)
    smtp_server.stop()
    install_license(intranet=0)
    assert not add(app, "x")
    smtp_server.start()
    with app.app_context():
        wsgi.db.session.execute(
            sa.update(OutboxMessage).values(
                claimed_by="other-host:1", claimed_until=utcnow() + timedelta(minutes=5)
            )
        )
        wsgi.db.session.commit()
        assert outbox.send_pending(retry_now=True).sent == []
        later = utcnow() + timedelta(minutes=6)
        assert len(outbox.send_pending(retry_now=True, now=later).sent) == 1
    assert len(smtp_server.messages) == 1


# No address set ----------------------------------------------------------------------------


def test_without_an_address_the_event_is_recorded_and_the_page_warns(
    mail_app, smtp_server, install_license, auth, client, accounts
):
    install_license(intranet=3)
    assert not add(mail_app, "extra")
    assert outbox_rows(mail_app) == []
    assert smtp_server.messages == []
    [(pool, path, detail)] = exceeded_audit(mail_app)
    assert pool == "intranet" and path == "single"
    assert "nobody was told" in detail
    auth.login("sysadmin")
    page = client.get("/admin/licenses/").get_data(as_text=True)
    assert "No Responsible person is set: nobody will be told" in page
    assert "The intranet pool has been exceeded since" in page


# The Responsible person ------------------------------------------------------------------------

BAD_ADDRESSES = [
    ("it@example.com\nbcc@evil.example", "line break"),
    ("it@example.com\r\n", "line break"),
    ("a@example.com, b@example.com", "more than one address"),
    ("a@example.com;b@example.com", "more than one address"),
    ("a@example.com b@example.com", "more than one address"),
    ("IT Licenses <it@example.com>", "display name"),
    ("<it@example.com>", "display name"),
    ('"it"@example.com', "display name"),
    ("not-an-address", "not a valid email address"),
    ("it@", "not a valid email address"),
    ("@example.com", "not a valid email address"),
    ("it@@example.com", "more than one address"),
    ("it@example..com", "not a valid email address"),
    ("", "Enter an email address"),
    ("   ", "Enter an email address"),
    ("it\t@example.com", "control character"),
    ("x" * 250 + "@example.com", "longer than 254"),
    ("not an email", "is not a valid email address. Enter one address such as"),
    # No SMTPUTF8 on the mail server: these were accepted, then never sent.
    ("ιτ@παράδειγμα.δοκιμή", "has letters outside ASCII before the @ (ι, τ)"),
    ("😀@example.com", "has letters outside ASCII before the @ (😀)"),
]


@pytest.mark.parametrize(("value", "reason"), BAD_ADDRESSES)
def test_a_bad_address_is_refused_by_the_cli_and_the_old_one_stays(runner, app, value, reason):
    set_responsible(app, "old@example.com")
    result = runner.invoke(args=["licenses", "responsible-person", value])
    assert result.exit_code == 1
    assert "The Responsible person was not changed." in result.output
    assert reason in result.output
    assert responsible(app) == "old@example.com"


@pytest.mark.parametrize(("value", "reason"), BAD_ADDRESSES)
def test_a_bad_address_is_refused_by_the_form_and_the_old_one_stays(
    app, auth, client, accounts, value, reason
):
    set_responsible(app, "old@example.com")
    auth.login("sysadmin")
    response = client.post(
        "/admin/licenses/responsible-person", data={"email": value}, follow_redirects=True
    )
    page = response.get_data(as_text=True)
    assert "The Responsible person was not changed." in page
    assert reason in page
    assert responsible(app) == "old@example.com"


def test_a_domain_in_another_script_is_accepted(app, runner):
    result = runner.invoke(args=["licenses", "responsible-person", "it@παράδειγμα.δοκιμή"])
    assert result.exit_code == 0, result.output
    assert responsible(app) == "it@παράδειγμα.δοκιμή"


def test_setting_the_address_is_recorded_with_who_and_when(app, runner, auth, client, accounts):
    result = runner.invoke(args=["licenses", "responsible-person"])
    assert "No Responsible person is set" in result.output
    result = runner.invoke(args=["licenses", "responsible-person", " Licenses@Example.COM "])
    assert result.exit_code == 0, result.output
    assert "now Licenses@example.com (was nobody)" in result.output
    assert runner.invoke(args=["licenses", "responsible-person"]).output == (
        "Licenses@example.com\n"
    )
    auth.login("sysadmin")
    response = client.post(
        "/admin/licenses/responsible-person",
        data={"email": "group-it@example.com"},
        follow_redirects=True,
    )
    assert "now group-it@example.com (was Licenses@example.com)" in response.get_data(as_text=True)
    page = client.get("/admin/licenses/").get_data(as_text=True)
    assert "<strong>group-it@example.com</strong> is told by email" in page
    result = runner.invoke(args=["licenses", "responsible-person", "--clear"])
    assert result.exit_code == 0 and "nobody will be told" in result.output
    with app.app_context():
        rows = wsgi.db.session.execute(
            sa.select(AuditEvent.actor, AuditEvent.path, AuditEvent.detail, AuditEvent.at)
            .where(AuditEvent.action == "setting")
            .order_by(AuditEvent.id)
        ).all()
    assert [(path, detail) for _, path, detail, _ in rows] == [
        ("cli", "Responsible person: (none) -> Licenses@example.com"),
        ("page", "Responsible person: Licenses@example.com -> group-it@example.com"),
        ("cli", "Responsible person: group-it@example.com -> (none)"),
    ]
    assert rows[1].actor == "sysadmin" and rows[0].actor.startswith("cli")
    assert all(at is not None for *_, at in rows)


@pytest.mark.parametrize("username", ["peopleadmin", "jennifer"])
def test_only_a_sysadmin_sets_the_address(app, auth, client, accounts, username):
    auth.login(username)
    response = client.post("/admin/licenses/responsible-person", data={"email": "x@example.com"})
    assert response.status_code == 403
    assert responsible(app) is None


def test_anonymous_users_are_sent_to_login(client):
    response = client.post("/admin/licenses/responsible-person", data={"email": "x@example.com"})
    assert response.status_code == 302 and "/login" in response.headers["Location"]


# Several processes at the same moment ---------------------------------------------------------


def _race_worker(config, instance_path, barrier, names, results):
    app = wsgi.create_app(config, instance_path=instance_path)
    refused = 0
    with app.app_context():
        barrier.wait(timeout=60)
        for name in names:
            if not add(app, name):
                refused += 1
        wsgi.dispose_engines()
    results.put(refused)


def _race(config, instance_path, processes=2, attempts=5) -> int:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=_race_worker,
            args=(
                config,
                instance_path,
                barrier,
                [f"p{n}x{i}" for i in range(attempts)],
                results,
            ),
        )
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    refused = sum(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    return refused


def test_two_processes_on_sqlite_send_one(mail_app, smtp_server, install_license):
    app = mail_app
    set_responsible(app)
    install_license(intranet=2)
    assert add(app, "first")
    with app.app_context():
        wsgi.dispose_engines()
    refused = _race(dict(app.config), app.instance_path)
    assert refused == 9  # one took the last seat
    assert len(smtp_server.messages) == 1
    assert len(outbox_rows(app)) == 1


@pytest.fixture
def pg_app(postgres_url, vendor_key, make_license, smtp_server, tmp_path):
    """The demo on a fresh PostgreSQL database, mailing to ``smtp_server``."""
    app = demo_app_on(
        postgres_url, vendor_key, make_license(intranet=2), tmp_path / "instance",
        **smtp_server.config(),
    )  # fmt: skip
    yield app
    with app.app_context():
        wsgi.dispose_engines()


@pytest.mark.postgres
def test_two_processes_on_postgresql_send_one(pg_app, smtp_server):
    set_responsible(pg_app)
    assert add(pg_app, "first")
    with pg_app.app_context():
        wsgi.dispose_engines()
    refused = _race(dict(pg_app.config), pg_app.instance_path, processes=4)
    assert refused == 19
    assert len(smtp_server.messages) == 1
    assert len(outbox_rows(pg_app)) == 1


def _sender_worker(config, instance_path, barrier, results):
    app = wsgi.create_app(config, instance_path=instance_path)
    with app.app_context():
        barrier.wait(timeout=60)
        report = outbox.send_pending(retry_now=True)
        wsgi.dispose_engines()
    results.put(len(report.sent))


def test_concurrent_senders_send_each_message_once(mail_app, smtp_server, tmp_path):
    app = mail_app
    with app.app_context():
        for number in range(20):
            outbox.queue(
                wsgi.db.session,
                kind="test",
                recipient=f"r{number}@example.com",
                subject=f"Message {number}",
                text="Hello",
                html=None,
                now=utcnow() - timedelta(minutes=1),
            )
        wsgi.db.session.flush()
        wsgi.db.session.info.pop("licenses_outbox_ids", None)  # leave them to the senders
        wsgi.db.session.commit()
        wsgi.dispose_engines()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=_sender_worker,
            args=(dict(app.config), app.instance_path, barrier, results),
        )
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    sent = sum(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    assert sent == 20
    subjects = sorted(m["Subject"] for _, _, m in smtp_server.messages)
    assert subjects == sorted(f"Message {n}" for n in range(20))


def test_a_host_template_overrides_the_shipped_email(
    mail_app, smtp_server, install_license, tmp_path
):
    """A file of the same name in the host's templates folder wins over the shipped one."""
    folder = tmp_path / "host-templates"
    (folder / "licenses" / "mail").mkdir(parents=True)
    (folder / "licenses" / "mail" / "exceeded_subject.txt").write_text(
        "Seats run out at {{ site_name }}"
    )
    mail_app.template_folder = str(folder)
    mail_app.__dict__.pop("jinja_loader", None)  # Flask caches the folder's loader
    mail_app.jinja_env.cache.clear()
    set_responsible(mail_app)
    install_license(intranet=0)
    assert not add(mail_app, "x")
    message = smtp_server.messages[0][2]
    assert message["Subject"] == "Seats run out at intranet.example.com"
    assert "Intranet pool: 0 in use, limit 0." in body(message)  # the shipped body


@pytest.mark.parametrize("page", ["/admin/licenses/", "/admin/licenses/summary",
                                  "/admin/licenses/people"])  # fmt: skip
def test_a_figure_page_notices_an_invalid_license_once(mail_app, smtp_server, auth, client,
                                                       accounts, page):  # fmt: skip
    """The License, summary and People pages notice from the statement that reads their
    figures: one email, however often the page is viewed."""
    set_responsible(mail_app)
    auth.login("admin")
    mail_app.config["LICENSES_SITE_NAME"] = "elsewhere.example.org"  # the license no longer fits
    for _ in range(3):
        response = client.get(page)
        assert response.status_code == 200
        response.close()  # the outbox sends when the response is done
    assert len(smtp_server.messages) == 1


def test_the_license_page_that_notices_shows_the_episode_it_opened(
    mail_app, smtp_server, auth, client, accounts
):
    set_responsible(mail_app)
    auth.login("sysadmin")
    mail_app.config["LICENSES_SITE_NAME"] = "elsewhere.example.org"
    first = client.get("/admin/licenses/").get_data(as_text=True)
    assert "The intranet pool has been exceeded since" in first


def test_a_refused_visit_to_a_figure_page_still_notices(mail_app, smtp_server, auth, client,
                                                        accounts):  # fmt: skip
    set_responsible(mail_app)
    auth.login("jennifer")
    mail_app.config["LICENSES_SITE_NAME"] = "elsewhere.example.org"
    assert client.get("/admin/licenses/").status_code == 403
    with mail_app.app_context():
        seen = wsgi.db.session.get(Setting, notifications.LICENSE_STATE).value
    assert seen != "valid"


def _outbox_state_on(app):
    """outbox.state over 3 sent messages (the newest sent has the lowest id) and 55 unsent
    ones (every third tried already); all and only the unsent are requests but the last 3."""
    base = datetime(2026, 12, 1, 9, 0)
    with app.app_context():
        session = wsgi.db.session
        for n, sent in enumerate((base + timedelta(hours=3), base, base + timedelta(hours=1))):
            session.add(_message("exceeded", created=base, sent_at=sent, subject=f"sent {n}"))
        for n in range(55):
            tried = n % 3 == 0
            session.add(
                _message("request" if n < 52 else "exceeded", created=base, attempts=int(tried),
                         subject=f"unsent {n}")
            )  # fmt: skip
        session.commit()
        return outbox.state(session), outbox.state(session, kinds=("request",))


def _message(kind, *, created, sent_at=None, attempts=0, subject):
    return OutboxMessage(
        kind=kind, recipient="it@example.com", subject=subject, text="", created_at=created,
        attempts=attempts, next_attempt_at=created, sent_at=sent_at,
    )  # fmt: skip


def _check_outbox_state(everything, requests):
    assert everything.last_sent.subject == "sent 0"  # the newest sent, not the highest id
    unsent = everything.waiting + everything.failed
    assert len(unsent) == 50  # the first 50 unsent, by id
    assert sorted(m.subject for m in unsent) == sorted(f"unsent {n}" for n in range(50))
    assert all(m.attempts == 0 for m in everything.waiting)
    assert {m.subject for m in everything.failed} == {f"unsent {n}" for n in range(0, 50, 3)}
    assert requests.last_sent is None  # no request message was sent: 50 of the 52 unsent
    assert {m.subject for m in requests.waiting + requests.failed} == {
        f"unsent {n}" for n in range(50)
    }


def test_outbox_state_lists_the_last_sent_and_the_first_unsent(app):
    _check_outbox_state(*_outbox_state_on(app))


@pytest.mark.postgres
def test_outbox_state_on_postgresql(pg_app):
    _check_outbox_state(*_outbox_state_on(pg_app))

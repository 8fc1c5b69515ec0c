"""SSO just-in-time sign-in at the limit (DESIGN.md rule 2), through the demo's login page."""

from __future__ import annotations

import html

import pytest
import sqlalchemy as sa
from conftest import count_users, person_state, usage

import wsgi
from intranet_licenses import SignInRefused, seats, sign_in
from intranet_licenses.models import AWAITING_LICENSE, AuditEvent, Setting, utcnow
from intranet_licenses.notifications import RESPONSIBLE_PERSON


def sso_form(username, first="New", surname="Starter", email=None):
    return {
        "sso_username": username,
        "sso_first_name": first,
        "sso_surname": surname,
        "sso_email": email if email is not None else f"{username.lower()}@example.com",
    }


def page_text(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def test_a_new_person_gets_an_active_profile_and_is_signed_in(app, client, install_license):
    install_license(intranet=5)
    response = client.post("/login/sso", data=sso_form("newbie"))
    assert response.status_code == 302
    assert person_state(app, "newbie") == (True, "primary", "intranet", None, "intranet")
    with app.app_context():
        user = seats.find_person(wsgi.db.session, "newbie")
        assert seats.profile_of(wsgi.db.session, user).source == "sso"
    assert client.get("/").status_code == 200  # signed in: the intranet's home page


def test_the_same_name_in_other_letter_case_finds_the_same_profile(app, client, install_license):
    install_license(intranet=5)
    client.post("/login/sso", data=sso_form("Mixed.Case"))
    before = count_users(app)
    client.post("/logout")
    response = client.post("/login/sso", data=sso_form("MIXED.case"))
    assert response.status_code == 302
    assert count_users(app) == before
    with app.app_context():
        session = wsgi.db.session
        first = seats.find_person(session, "mixed.case")
        again = sign_in(session, {"preferred_username": "mIxEd.CaSe"}, now=utcnow())
        assert again.id == first.id and first.username == "Mixed.Case"
    assert usage(app)["intranet"] == 1


def test_sign_in_at_the_limit_is_refused_in_words_and_leaves_nothing(
    app, client, install_license, make_person
):
    install_license(intranet=1)
    make_person("holder")
    before = count_users(app)
    response = client.post("/login/sso", data=sso_form("latecomer"))
    assert response.status_code == 403
    text = page_text(response)
    assert "No free license for a new account" in text
    assert "Your intranet account cannot be created: all licenses are in use." in text
    assert "Ask your intranet administrator (admin@example.com)" in text
    assert count_users(app) == before
    assert person_state(app, "latecomer") is None
    assert usage(app)["intranet"] == 1
    with app.app_context():
        refused = wsgi.db.session.scalars(
            sa.select(AuditEvent).where(AuditEvent.subject == "latecomer")
        ).all()
        assert [(e.action, e.path, e.outcome) for e in refused] == [("add", "sso", "refused")]
    # The person can come back once a seat is free.
    with app.app_context():
        session = wsgi.db.session
        holder = seats.find_person(session, "holder")
        seats.block(session, holder, actor="t", now=utcnow(), path="t")
        session.commit()
    assert client.post("/login/sso", data=sso_form("latecomer")).status_code == 302


def test_the_refusal_names_the_responsible_person_when_set(
    app, client, install_license, make_person
):
    install_license(intranet=1)
    make_person("holder")
    with app.app_context():
        wsgi.db.session.add(Setting(name=RESPONSIBLE_PERSON, value="licenses@example.com"))
        wsgi.db.session.commit()
    text = page_text(client.post("/login/sso", data=sso_form("latecomer")))
    assert "Ask the person responsible for licenses (licenses@example.com)" in text


@pytest.mark.parametrize(
    ("reason", "heading", "sentence"),
    [
        ("admin", "Your account is blocked", "Your account is blocked."),
        (
            AWAITING_LICENSE,
            "Your account is waiting for a license",
            "Your account is waiting for a free license.",
        ),
        ("directory", "Your account is blocked", "the company directory disabled it"),
    ],
)
def test_a_blocked_or_waiting_person_is_told_which(
    app, client, install_license, make_person, reason, heading, sentence
):
    install_license(intranet=5)
    make_person("known", blocked=reason)
    response = client.post("/login/sso", data=sso_form("KNOWN"))
    assert response.status_code == 403
    text = page_text(response)
    assert heading in text and sentence in text
    with app.app_context():
        with pytest.raises(SignInRefused) as refusal:
            sign_in(wsgi.db.session, {"preferred_username": "known"}, now=utcnow())
        assert refusal.value.kind == ("waiting" if reason == AWAITING_LICENSE else "blocked")


@pytest.mark.parametrize("username", ["admin", "SYSADMIN"])
def test_the_simulated_provider_never_opens_a_password_account(client, accounts, username):
    response = client.post("/login/sso", data=sso_form(username))
    assert response.status_code == 403
    assert "signs in with a password above" in page_text(response)
    assert client.get("/admin/licenses/").status_code == 302  # still signed out


def test_claims_without_a_username_or_names_are_refused_in_words(app, install_license):
    install_license(intranet=5)
    with app.app_context():
        session = wsgi.db.session
        with pytest.raises(SignInRefused, match="did not say who you are"):
            sign_in(session, {"email": ""}, now=utcnow())
        with pytest.raises(SignInRefused, match="a first name and a surname are required"):
            sign_in(session, {"preferred_username": "nameless"}, now=utcnow())
        user = sign_in(
            session, {"preferred_username": "named", "name": "Ada King Lovelace"}, now=utcnow()
        )
        assert (user.first_name, user.surname) == ("Ada King", "Lovelace")


def test_the_waiting_page_names_whom_to_ask(app, client, install_license, make_person):
    """A waiting person with a live session sees the per-request page, naming a contact."""
    install_license(intranet=5)
    make_person("waiter")
    client.post("/login", data={"username": "waiter", "password": "test-password"})
    with app.app_context():
        session = wsgi.db.session
        seats.block(
            session,
            seats.find_person(session, "waiter"),
            reason=AWAITING_LICENSE,
            actor="t",
            now=utcnow(),
            path="t",
        )
        session.add(Setting(name=RESPONSIBLE_PERSON, value="it-licenses@example.com"))
        session.commit()
    response = client.get("/")
    assert response.status_code == 403
    text = page_text(response)
    assert "Your account is waiting for a license" in text
    assert "Whom to ask: the person responsible for licenses" in text
    assert 'href="mailto:it-licenses@example.com"' in text


def test_the_login_page_labels_the_simulation(client):
    text = page_text(client.get("/login"))
    assert "Sign in with Example SSO" in text
    assert "Simulation:" in text and "no real identity provider" in text


def test_an_email_without_a_username_claim_is_the_whole_username(app, install_license):
    install_license(intranet=5)
    with app.app_context():
        session = wsgi.db.session
        one = sign_in(
            session,
            {"email": "alice@a.example.com", "given_name": "Alice", "family_name": "A"},
            now=utcnow(),
        )
        two = sign_in(
            session,
            {"email": "alice@b.example.com", "given_name": "Alice", "family_name": "B"},
            now=utcnow(),
        )
        session.commit()
        assert one.id != two.id
        assert (one.username, two.username) == ("alice@a.example.com", "alice@b.example.com")


def test_two_sign_ins_of_one_new_person_at_once_give_one_profile(
    app, install_license, monkeypatch
):
    """Both requests pass the "is the username free?" check before either writes."""
    import threading

    install_license(intranet=5)
    barrier = threading.Barrier(2, timeout=10)
    checked = seats.username_taken

    def username_taken_in_step(session, username):
        found = checked(session, username)
        barrier.wait()
        return found

    monkeypatch.setattr(seats, "username_taken", username_taken_in_step)
    results, errors = [], []

    def one_sign_in(letters):
        try:
            with app.app_context():
                session = wsgi.db.session
                user = sign_in(
                    session,
                    {"preferred_username": letters, "given_name": "Twin", "family_name": "Tab"},
                    now=utcnow(),
                )
                session.commit()
                results.append(user.id)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one_sign_in, args=(n,)) for n in ("twin", "TWIN")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(results) == 2 and results[0] == results[1]
    assert usage(app)["intranet"] == 1


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_a_name_over_255_characters_is_an_invalid_sign_in(database, request, app):
    """On PostgreSQL this was StringDataRightTruncation from the flush."""
    if database == "postgresql":
        app = request.getfixturevalue("postgres_app")
    before = count_users(app)
    with app.app_context():
        session = wsgi.db.session
        claims = {"preferred_username": "longname", "given_name": "x" * 300, "family_name": "Y"}
        with pytest.raises(
            SignInRefused, match="first name of 'longname' is longer than 255"
        ) as e:
            sign_in(session, claims, now=utcnow())
        assert e.value.kind == "invalid"
        session.commit()
    assert count_users(app) == before


def test_a_username_with_an_invisible_character_is_an_invalid_sign_in(app, install_license):
    install_license(intranet=5)
    with app.app_context():
        with pytest.raises(SignInRefused, match="a control or invisible character") as refused:
            sign_in(
                wsgi.db.session, {"preferred_username": "\ufeffbom", "name": "B O"}, now=utcnow()
            )
        assert refused.value.kind == "invalid"

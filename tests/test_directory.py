"""Directory sync against a real slapd on loopback (DESIGN.md rules 2 and 3, issue 6)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import count_users, person_state, usage
from slapd import ADMIN_DN, ADMIN_PASSWORD, Directory, Slapd

import wsgi
from intranet_licenses import directory, seats
from intranet_licenses.models import (
    AWAITING_LICENSE,
    BLOCKED_BY_ADMIN,
    BLOCKED_BY_DIRECTORY,
    AuditEvent,
    Profile,
    utcnow,
)

pytestmark = pytest.mark.slapd


def sync(app, now=None):
    """Run one sync with the app's LICENSES_LDAP_* settings, as the command does."""
    with app.app_context():
        session = wsgi.db.session
        try:
            report = directory.sync(
                session,
                directory.settings_from_config(),
                actor="tester",
                now=now or utcnow(),
                path="directory",
            )
        except directory.DirectoryError:
            session.commit()
            raise
        session.commit()
        return report


def states(app) -> dict[str, tuple]:
    """{username: (active, block_reason)} of every directory profile."""
    with app.app_context():
        rows = wsgi.db.session.execute(
            sa.select(wsgi.User.username, wsgi.User.active, Profile.block_reason)
            .join(Profile, Profile.user_id == wsgi.User.id)
            .where(Profile.directory_id.is_not(None))
        ).all()
        return {name: (active, reason) for name, active, reason in rows}


def active_names(app) -> set[str]:
    return {name for name, (active, _) in states(app).items() if active}


def waiting_names(app) -> set[str]:
    return {name for name, (_, reason) in states(app).items() if reason == AWAITING_LICENSE}


def admin_block(app, username):
    with app.app_context():
        session = wsgi.db.session
        user = seats.find_person(session, username)
        seats.block(session, user, actor="tester", now=utcnow(), path="test")
        session.commit()


def audit(app, action="sync"):
    with app.app_context():
        return [
            (e.outcome, e.pool, e.detail)
            for e in wsgi.db.session.scalars(
                sa.select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
            )
        ]


def test_ten_free_seats_and_twenty_five_new_people(app, install_license, tree):
    install_license(intranet=10)
    for n in range(25):
        tree.add_ad_user(f"new{n:02d}")
    report = sync(app)
    assert report.counts() == {
        "created active": 10,
        "created waiting": 15,
        "activated": 0,
        "blocked": 0,
        "updated": 0,
        "unchanged": 0,
        "skipped": 0,
    }
    assert len(active_names(app)) == 10
    assert len(waiting_names(app)) == 15
    assert usage(app)["intranet"] == 10
    # Waiting people cannot log in; they are told why.
    name = sorted(waiting_names(app))[0]
    with app.app_context():
        user = seats.find_person(wsgi.db.session, name)
        assert user.active is False
    # The sync left people waiting: one exceeded event for the pool, not fifteen.
    waiting_events = [row for row in audit(app) if row[0] == "waiting"]
    assert waiting_events == [
        (
            "waiting",
            "intranet",
            "15 people the directory lists wait for a license in the intranet pool.",
        )
    ]
    assert "15 people wait for a license in the intranet pool" in " ".join(report.lines())

    # Nothing changed in the directory and no seat is free: the next sync changes nothing.
    again = sync(app)
    assert again.counts()["unchanged"] == 25
    assert again.created_active == again.created_waiting == again.activated == 0

    # Block 5 active people: the next sync activates the 5 who have waited longest.
    queue = waiting_queue(app)
    for name in sorted(active_names(app))[:5]:
        admin_block(app, name)
    report = sync(app)
    assert report.activated == 5
    assert {name for name in queue[:5]} <= active_names(app)
    assert waiting_names(app) == set(queue[5:])
    assert usage(app)["intranet"] == 10


def waiting_queue(app) -> list[str]:
    """Usernames awaiting a license, longest waiting first (ties: first created first)."""
    with app.app_context():
        return list(
            wsgi.db.session.scalars(
                sa.select(wsgi.User.username)
                .join(Profile, Profile.user_id == wsgi.User.id)
                .where(Profile.block_reason == AWAITING_LICENSE)
                .order_by(Profile.waiting_since, Profile.user_id)
            )
        )


def test_freed_seats_go_to_the_oldest_waiting_people_still_listed(app, install_license, tree):
    install_license(intranet=10)
    t0 = utcnow() - timedelta(days=2)
    first = {tree.add_ad_user(f"early{n:02d}"): f"early{n:02d}" for n in range(12)}
    sync(app, now=t0)
    assert len(active_names(app)) == 10
    early_waiting = waiting_names(app)
    assert len(early_waiting) == 2
    for n in range(13):
        tree.add_ad_user(f"late{n:02d}")
    sync(app, now=t0 + timedelta(days=1))
    assert len(waiting_names(app)) == 15

    # One of the two oldest waiting people leaves the directory before seats free up.
    gone = sorted(early_waiting)[0]
    tree.remove(next(dn for dn, name in first.items() if name == gone))
    for name in sorted(active_names(app))[:5]:
        admin_block(app, name)
    assert usage(app)["intranet"] == 5

    with app.app_context():
        order = [
            name
            for (name,) in wsgi.db.session.execute(
                sa.select(wsgi.User.username)
                .join(Profile, Profile.user_id == wsgi.User.id)
                .where(Profile.block_reason == AWAITING_LICENSE)
                .order_by(Profile.waiting_since, Profile.user_id)
            )
        ]
    expected = [name for name in order if name != gone][:5]
    report = sync(app)
    assert report.activated == 5
    now_active = active_names(app)
    assert set(expected) <= now_active
    assert sorted(early_waiting)[1] in expected  # the older waiter goes first
    assert states(app)[gone] == (False, BLOCKED_BY_DIRECTORY)  # gone: blocked, not activated
    assert len(waiting_names(app)) == 14 - 5
    assert usage(app)["intranet"] == 10


def test_an_administrator_blocked_person_stays_blocked_through_two_syncs(
    app, install_license, tree
):
    install_license(intranet=10)
    for name in ("ada", "bob", "cyd"):
        tree.add_ad_user(name)
    sync(app)
    admin_block(app, "bob")
    for _ in range(2):
        report = sync(app)
        assert states(app)["bob"] == (False, BLOCKED_BY_ADMIN)
        assert report.activated == 0
    # Disabled in the directory and enabled again: still the administrator's block.
    dn = next(e for e in _dns(tree) if "bob" in e)
    tree.disable(dn)
    sync(app)
    tree.disable(dn, False)
    sync(app)
    assert states(app)["bob"] == (False, BLOCKED_BY_ADMIN)


def _dns(tree: Directory) -> list[str]:
    tree.conn.search(tree.base_dn, "(objectClass=person)")
    return [entry.entry_dn for entry in tree.conn.entries]


def test_a_disabled_account_is_blocked_by_the_directory_and_returns_when_enabled(
    app, install_license, tree
):
    install_license(intranet=2)
    dn = tree.add_ad_user("dora")
    tree.add_ad_user("eve")
    sync(app)
    assert states(app)["dora"] == (True, None)

    tree.disable(dn)
    report = sync(app)
    assert report.blocked == 1
    assert states(app)["dora"] == (False, BLOCKED_BY_DIRECTORY)
    assert usage(app)["intranet"] == 1
    assert count_users(app) == 3  # never deleted (admin, dora, eve)

    # Enabled again while the pool is full: waits for a license instead.
    tree.add_ad_user("fay")
    sync(app)
    assert states(app)["fay"] == (True, None)
    tree.disable(dn, False)
    report = sync(app)
    assert report.requeued == 1
    assert states(app)["dora"] == (False, AWAITING_LICENSE)

    # A seat frees up: the next sync activates her.
    admin_block(app, "eve")
    report = sync(app)
    assert report.activated == 1
    assert states(app)["dora"] == (True, None)


def test_a_disabled_account_enabled_again_with_a_free_seat_is_active(app, install_license, tree):
    install_license(intranet=5)
    dn = tree.add_ad_user("gil", disabled=True)
    report = sync(app)
    assert report.disabled_not_created == 1 and count_users(app) == 1
    tree.disable(dn, False)
    sync(app)
    assert states(app)["gil"] == (True, None)
    tree.disable(dn)
    sync(app)
    tree.disable(dn, False)
    report = sync(app)
    assert report.activated == 1
    assert states(app)["gil"] == (True, None)


def test_an_administrators_block_during_the_sync_outlasts_the_directorys_enable(
    app, install_license, tree, monkeypatch
):
    """gil, blocked by the directory, is enabled there again; just before the sync seats
    him, an administrator blocks him (the sync's unblock reads the row after its lock):
    he stays blocked by the administrator."""
    install_license(intranet=5)
    dn = tree.add_ad_user("gil")
    sync(app)
    tree.disable(dn)
    sync(app)
    assert states(app)["gil"] == (False, BLOCKED_BY_DIRECTORY)
    tree.disable(dn, False)
    unblock = seats.unblock

    def blocked_by_an_administrator_first(session, user, **kwargs):
        seats.block(session, user, actor="peopleadmin", now=utcnow(), path="page")
        return unblock(session, user, **kwargs)

    monkeypatch.setattr(seats, "unblock", blocked_by_an_administrator_first)
    report = sync(app)
    assert report.activated == 0
    assert states(app)["gil"] == (False, BLOCKED_BY_ADMIN)


def test_a_rename_and_new_names_update_the_same_profile_even_when_full(app, install_license, tree):
    install_license(intranet=1)
    dn = tree.add_ad_user("hal", first="Hal", surname="Jordan", mail="hal@example.com")
    sync(app)
    with app.app_context():
        before = seats.find_person(wsgi.db.session, "hal").id
    assert usage(app)["intranet"] == 1  # the pool is full now

    tree.set(
        dn,
        sAMAccountName="hjordan",
        sn="Jordan-Ferris",
        mail="h.jordan@example.com",
    )
    report = sync(app)
    assert report.updated == 1 and report.created_active == report.created_waiting == 0
    with app.app_context():
        user = seats.find_person(wsgi.db.session, "HJORDAN")
        assert user.id == before
        assert (user.username, user.surname, user.email) == (
            "hjordan",
            "Jordan-Ferris",
            "h.jordan@example.com",
        )
        assert user.active
    assert count_users(app) == 2
    assert usage(app)["intranet"] == 1


def test_an_openldap_rename_keeps_the_entry_uuid(app, install_license, tree):
    install_license(intranet=5)
    dn = tree.add_posix_user("ivy")
    sync(app)
    with app.app_context():
        before = seats.find_person(wsgi.db.session, "ivy").id
    # uid is the RDN: a modrdn renames the entry; its entryUUID stays.
    tree.conn.modify_dn(dn, "uid=ivy.new")
    tree.conn.modify(f"uid=ivy.new,{tree.base_dn}", {"uid": [("MODIFY_DELETE", ["ivy"])]})
    report = sync(app)
    assert report.updated == 1
    with app.app_context():
        assert seats.find_person(wsgi.db.session, "ivy.new").id == before
    assert states(app) == {"ivy.new": (True, None)}


def test_several_mail_values_take_the_first_and_a_malformed_entry_is_skipped(
    app, install_license, tree
):
    install_license(intranet=10)
    tree.add_ad_user("jon", mail=["jon@example.com", "jon.other@example.com"])
    tree.add_ad_user("kim", mail="not an address")
    tree.conn.add(
        f"cn=Lee Noname,{tree.base_dn}",
        ["inetOrgPerson"],
        {"cn": "Lee Noname", "sn": "Noname", "givenName": "Lee"},
    )
    tree.add_ad_user("max")
    report = sync(app)
    assert report.created_active == 2
    skipped = {item.dn.split(",")[0]: item.why for item in report.skipped}
    assert len(skipped) == 2
    assert any("'not an address' is not a valid email address" in why for why in skipped.values())
    assert skipped["cn=Lee Noname"] == "it has neither sAMAccountName nor uid"
    assert any("Skipped cn=Kim Person kim" in line for line in report.lines())
    with app.app_context():
        assert seats.find_person(wsgi.db.session, "jon").email == "jon@example.com"
    # A skipped entry is still in the directory: it never counts as gone.
    tree.conn.modify(
        next(dn for dn in _dns(tree) if "max" in dn),
        {"mail": [("MODIFY_REPLACE", ["also wrong"])]},
    )
    report = sync(app)
    assert states(app)["max"] == (True, None)
    assert report.blocked == 0


def test_only_directory_profiles_can_be_gone(app, install_license, tree, make_person):
    install_license(intranet=10)
    make_person("handmade")
    dn = tree.add_ad_user("nia")
    tree.add_ad_user("oto")
    sync(app)
    tree.remove(dn)
    report = sync(app)
    assert report.blocked == 1
    assert states(app)["nia"] == (False, BLOCKED_BY_DIRECTORY)
    assert person_state(app, "handmade")[0] is True  # never "gone": not from the directory


def test_a_listing_of_nobody_blocks_nobody(app, install_license, tree):
    install_license(intranet=10)
    tree.add_ad_user("pia")
    sync(app)
    app.config["LICENSES_LDAP_FILTER"] = "(sAMAccountName=nobody-has-this)"
    with pytest.raises(directory.DirectoryError, match="listed nobody"):
        sync(app)
    assert states(app)["pia"] == (True, None)


def test_areas_from_a_group_and_from_an_ou(app, install_license, tree):
    install_license(intranet=10, extranet=10)
    app.config["LICENSES_EXTRANET_AREAS"] = ["partners", "suppliers"]
    ou = tree.add_ou("suppliers")
    partner = tree.add_ad_user("quin")
    tree.add_ad_user("rae", parent=ou)
    tree.add_ad_user("sol")
    group = tree.add_group("partners", [partner])
    app.config["LICENSES_LDAP_AREAS"] = {"partners": group, "suppliers": ou}
    sync(app)
    assert person_state(app, "quin")[1:3] == ("partners", "extranet")
    assert person_state(app, "rae")[1:3] == ("suppliers", "extranet")
    assert person_state(app, "sol")[1:3] == ("primary", "intranet")
    assert usage(app) == {"intranet": 1, "extranet": 2, "readonly": 0}


def spaced(dn: str) -> str:
    """``dn`` as people type it: a space after every comma and around every '='."""
    return ", ".join(rdn.replace("=", " = ") for rdn in dn.split(","))


def test_dns_typed_with_spaces_read_the_same(app, install_license, tree):
    install_license(intranet=10, extranet=10)
    app.config["LICENSES_EXTRANET_AREAS"] = ["partners", "suppliers"]
    ou = tree.add_ou("suppliers")
    partner = tree.add_ad_user("quin")
    tree.add_ad_user("rae", parent=ou)
    group = tree.add_group("partners", [partner])
    app.config["LICENSES_LDAP_AREAS"] = {"partners": spaced(group), "suppliers": spaced(ou)}
    app.config["LICENSES_LDAP_BASE_DN"] = spaced(tree.base_dn)
    report = sync(app)
    assert report.created_active == 2
    assert person_state(app, "quin")[1:3] == ("partners", "extranet")
    assert person_state(app, "rae")[1:3] == ("suppliers", "extranet")


@pytest.mark.parametrize("key", ["base", "area"])
def test_a_malformed_dn_is_named_and_changes_nothing(app, install_license, tree, key):
    install_license(intranet=10)
    tree.add_ad_user("pia")
    if key == "base":
        app.config["LICENSES_LDAP_BASE_DN"] = "ou=Staff,,dc=example"
        what = "The base DN 'ou=Staff,,dc=example' is not a valid DN"
    else:
        app.config["LICENSES_EXTRANET_AREAS"] = ["partners"]
        app.config["LICENSES_LDAP_AREAS"] = {"partners": "Partners group"}
        what = "LICENSES_LDAP_AREAS['partners'] 'Partners group' is not a valid DN"
    with app.app_context(), pytest.raises(directory.DirectoryError) as failure:
        directory.settings_from_config()
    assert what in str(failure.value)
    assert "write it like ou=Staff,dc=example,dc=com" in str(failure.value)
    assert states(app) == {}


def test_a_stopped_server_changes_nothing(app, install_license, tmp_path):
    install_license(intranet=10)
    server = Slapd(tmp_path / "slapd").start()
    try:
        tree = Directory(server)
        dn = tree.add_ad_user("tad")
        tree.add_ad_user("uma")
        app.config.update(
            LICENSES_LDAP_URL=server.url,
            LICENSES_LDAP_BIND_DN=ADMIN_DN,
            LICENSES_LDAP_PASSWORD=ADMIN_PASSWORD,
            LICENSES_LDAP_BASE_DN=tree.base_dn,
            LICENSES_LDAP_TIMEOUT=3,
        )
        sync(app)
        tree.remove(dn)
        tree.add_ad_user("vic")
        tree.conn.unbind()
    finally:
        server.stop()
    before = states(app)
    with pytest.raises(directory.DirectoryError) as failure:
        sync(app)
    message = str(failure.value)
    assert f"The directory server at {server.url} cannot be reached" in message
    assert "Nothing was changed" in message
    assert states(app) == before == {"tad": (True, None), "uma": (True, None)}
    assert audit(app)[-1][0] == "error"


def test_a_refused_bind_changes_nothing(app, install_license, tree):
    install_license(intranet=10)
    tree.add_ad_user("wes")
    app.config["LICENSES_LDAP_PASSWORD"] = "wrong"
    with pytest.raises(directory.DirectoryError, match="refused the sign-in as cn=admin"):
        sync(app)
    assert states(app) == {}


def test_the_command(app, runner, install_license, tree, tmp_path, slapd_server):
    install_license(intranet=1)
    tree.add_ad_user("xia")
    tree.add_ad_user("yul")
    secret = tmp_path / "password"
    secret.write_text(ADMIN_PASSWORD + "\n")
    app.config["LICENSES_LDAP_PASSWORD"] = None
    result = runner.invoke(
        args=[
            "licenses",
            "sync-directory",
            "--url",
            slapd_server.url,
            "--bind-dn",
            ADMIN_DN,
            "--password-file",
            str(secret),
            "--base-dn",
            tree.base_dn,
            "--filter",
            "(objectClass=user)",
        ]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        "Directory sync: 1 created active, 1 created waiting, 0 activated, 0 blocked, "
        "0 updated, 0 unchanged, 0 skipped."
    )
    secret.write_text("wrong")
    result = runner.invoke(
        args=["licenses", "sync-directory", "--password-file", str(secret)],
    )
    assert result.exit_code == 1
    assert "refused the sign-in" in result.output
    result = runner.invoke(args=["licenses", "sync-directory"])
    assert result.exit_code == 1
    assert f"No password for {ADMIN_DN}: set LICENSES_LDAP_PASSWORD" in result.output
    secret.write_text(ADMIN_PASSWORD)
    result = runner.invoke(
        args=["licenses", "sync-directory", "--password-file", str(secret), "--filter", "uid=x("]
    )
    assert result.exit_code == 1
    assert "is not a valid LDAP filter" in result.output


def test_sync_now_on_the_people_page(app, client, auth, accounts, install_license, tree):
    install_license(intranet=5)
    tree.add_ad_user("zed")
    auth.login("peopleadmin")
    page = client.get("/admin/licenses/people").get_data(as_text=True)
    assert "Sync now" in page
    response = client.post("/admin/licenses/people/sync-directory")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert "Directory sync: 1 created active" in text
    assert states(app) == {"zed": (True, None)}

    app.config["LICENSES_LDAP_URL"] = "ldap://127.0.0.1:1"
    response = client.post("/admin/licenses/people/sync-directory")
    text = response.get_data(as_text=True)
    assert "The sync did not run: The directory server at ldap://127.0.0.1:1 cannot be" in text


@pytest.mark.parametrize("who", ["jennifer", "sysadmin"])
def test_sync_now_needs_the_people_administrator(app, client, auth, accounts, tree, who):
    tree.add_ad_user("nobody")
    auth.login(who)
    assert client.post("/admin/licenses/people/sync-directory").status_code == 403
    assert states(app) == {}


def test_an_objectguid_becomes_the_canonical_uuid(app, install_license, tree):
    install_license(intranet=5)
    guid = uuid.UUID("f3a0ac85-6b1c-4fb3-8d0c-0ab4b3c1a7d2")
    tree.add_ad_user("abe", guid=guid)
    sync(app)
    with app.app_context():
        profile = seats.profile_of(wsgi.db.session, seats.find_person(wsgi.db.session, "abe"))
        assert profile.directory_id == str(guid)
        assert profile.source == "directory"


@pytest.fixture
def pg_app(postgres_url, vendor_key, tmp_path, make_license):
    """The demo app on a fresh PostgreSQL database (dropped afterwards), 10 intranet seats."""
    from conftest import demo_app_on

    app = demo_app_on(postgres_url, vendor_key, make_license(intranet=10), tmp_path / "instance")
    yield app
    with app.app_context():
        wsgi.dispose_engines()


@pytest.mark.postgres
def test_ten_free_seats_and_twenty_five_new_people_on_postgresql(pg_app, slapd_server):
    tree = Directory(slapd_server)
    try:
        pg_app.config.update(
            LICENSES_LDAP_URL=slapd_server.url,
            LICENSES_LDAP_BIND_DN=ADMIN_DN,
            LICENSES_LDAP_PASSWORD=ADMIN_PASSWORD,
            LICENSES_LDAP_BASE_DN=tree.base_dn,
        )
        for n in range(25):
            tree.add_ad_user(f"pg{n:02d}")
        report = sync(pg_app)
        assert (report.created_active, report.created_waiting) == (10, 15)
        assert usage(pg_app)["intranet"] == 10
        for name in sorted(active_names(pg_app))[:5]:
            admin_block(pg_app, name)
        report = sync(pg_app)
        assert report.activated == 5
        assert usage(pg_app)["intranet"] == 10
        assert len(waiting_names(pg_app)) == 10
    finally:
        tree.conn.unbind()


def test_sync_now_without_a_configured_directory_says_what_to_set(client, auth, accounts):
    auth.login("peopleadmin")
    response = client.post("/admin/licenses/people/sync-directory")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert "The sync did not run: No directory server is set: set LICENSES_LDAP_URL" in text


def test_a_waiting_person_disabled_in_the_directory_is_not_activated(app, install_license, tree):
    install_license(intranet=1)
    tree.add_ad_user("amo")
    dn = tree.add_ad_user("bea")
    sync(app)
    assert states(app)["bea"] == (False, AWAITING_LICENSE)
    tree.disable(dn)
    admin_block(app, "amo")
    report = sync(app)
    assert report.blocked == 1 and report.activated == 0
    assert states(app)["bea"] == (False, BLOCKED_BY_DIRECTORY)
    assert usage(app)["intranet"] == 0


def test_a_sync_in_many_small_batches_keeps_every_rule(app, install_license, tree, monkeypatch):
    """Batches of 4, the listing spooled to disk, progress every 5: the same outcome as one
    batch (first listed get the seats, the rest wait, renames, blocks, gone, queue)."""
    monkeypatch.setattr(directory, "BATCH_SIZE", 4)
    monkeypatch.setattr(directory, "PROGRESS_EVERY", 5)
    monkeypatch.setattr(directory, "SPOOL_IN_MEMORY", 200)
    install_license(intranet=9)
    dns = [tree.add_ad_user(f"b{n:02d}") for n in range(14)]
    tree.add_ad_user("off", disabled=True)
    seen = []

    def run():
        with app.app_context():
            session = wsgi.db.session
            report = directory.sync(
                session,
                directory.settings_from_config(),
                actor="tester",
                now=utcnow(),
                path="directory",
                progress=lambda *args: seen.append(args),
            )
            session.commit()
            return report

    report = run()
    assert (report.created_active, report.created_waiting, report.disabled_not_created) == (
        9,
        5,
        1,
    )
    # Per batch, once past each multiple of PROGRESS_EVERY (15 listed, 14 of them new).
    assert seen == [("read", 5, None), ("read", 10, None), ("read", 15, None),
                    ("apply", 8, 15), ("apply", 12, 15), ("apply", 15, 15),
                    ("create", 8, 14), ("create", 12, 14)]  # fmt: skip
    assert usage(app)["intranet"] == 9
    queue = waiting_queue(app)
    assert len(queue) == 5

    # A rename, a disabled account, one gone, an admin block: seats free up for the queue.
    tree.set(dns[0], sAMAccountName="b00-renamed")
    tree.disable(dns[1])
    tree.remove(dns[2])
    admin_block(app, "b03")
    seen.clear()
    report = run()
    assert (report.updated, report.blocked, report.activated) == (1, 2, 3)
    assert report.unchanged == 14 - 3 - 3  # b03 (still the admin's block), b04..b13 less 3
    assert set(queue[:3]) <= active_names(app)
    assert waiting_queue(app) == queue[3:]
    assert states(app)["b00-renamed"] == (True, None)
    assert states(app)["b01"] == (False, BLOCKED_BY_DIRECTORY)
    assert states(app)["b02"] == (False, BLOCKED_BY_DIRECTORY)
    assert states(app)["b03"] == (False, BLOCKED_BY_ADMIN)
    assert usage(app)["intranet"] == 9


def test_the_command_shows_progress_for_a_large_directory(app, runner, install_license, tree,
                                                          monkeypatch):  # fmt: skip
    monkeypatch.setattr(directory, "PROGRESS_EVERY", 2)
    monkeypatch.setattr(directory, "BATCH_SIZE", 2)
    install_license(intranet=2)
    for n in range(4):
        tree.add_ad_user(f"pr{n}")
    result = runner.invoke(args=["licenses", "sync-directory"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "Directory sync: read 2 entries..." in lines
    assert "Directory sync: compared 4 of 4 listed people with their profiles..." in lines
    assert "Directory sync: created 4 of 4 new people..." in lines
    assert "Directory sync: 2 created active, 2 created waiting" in result.output

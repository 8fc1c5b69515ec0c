"""The seat rules (DESIGN.md rules 1, 2, 4 and 11), through the service and the ORM."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from conftest import count_users, person_state, usage

import wsgi
from intranet_licenses import licensing, seats
from intranet_licenses.models import (
    AWAITING_LICENSE,
    BLOCKED_BY_ADMIN,
    AuditEvent,
    Profile,
    SeatCounter,
    utcnow,
)


def add(app, username, **kwargs):
    with app.app_context():
        session = wsgi.db.session
        try:
            user = seats.add_person(
                session,
                username=username,
                first_name=kwargs.pop("first_name", "First"),
                surname=kwargs.pop("surname", "Last"),
                email=kwargs.pop("email", f"{username}@example.com"),
                actor="tester",
                now=kwargs.pop("now", utcnow()),
                path="test",
                **kwargs,
            )
        except seats.SeatError:
            session.commit()  # as the views do: keep the audit record of the refusal
            raise
        session.commit()
        return user.id


def act(app, service, username, **kwargs):
    with app.app_context():
        session = wsgi.db.session
        try:
            user = seats.find_person(session, username)
            service(session, user, actor="tester", now=utcnow(), path="test", **kwargs)
        except seats.SeatError:
            session.commit()
            raise
        session.commit()


def audit_rows(app, action=None):
    with app.app_context():
        query = sa.select(AuditEvent).order_by(AuditEvent.id)
        if action:
            query = query.where(AuditEvent.action == action)
        return [
            (e.action, e.subject, e.outcome, e.path, e.actor, e.pool)
            for e in wsgi.db.session.scalars(query)
        ]


def test_the_last_seat_and_one_past_it(app, install_license):
    install_license(intranet=2)
    add(app, "one")
    add(app, "two")
    assert usage(app)["intranet"] == 2
    before = count_users(app)
    with pytest.raises(seats.SeatLimitExceeded) as refusal:
        add(app, "three")
    error = refusal.value
    assert (error.pool, error.limit, error.used) == ("intranet", 2, 2)
    message = str(error)
    assert "No free seat in the intranet pool: 2 of 2 seats are in use" in message
    assert "Request more licenses" in message and "block or delete" in message
    assert count_users(app) == before
    assert person_state(app, "three") is None
    assert usage(app)["intranet"] == 2
    assert audit_rows(app, "add")[-1][:3] == ("add", "three", "refused")


def test_a_blocked_person_does_not_count_and_unblocking_into_a_full_pool_is_refused(
    app, install_license
):
    install_license(intranet=1)
    add(app, "ann")
    act(app, seats.block, "ann")
    assert usage(app)["intranet"] == 0
    assert person_state(app, "ann") == (False, "primary", "intranet", BLOCKED_BY_ADMIN, None)
    add(app, "bob")
    with pytest.raises(seats.SeatLimitExceeded, match="1 of 1 seats are in use"):
        act(app, seats.unblock, "ann")
    assert person_state(app, "ann") == (False, "primary", "intranet", BLOCKED_BY_ADMIN, None)
    assert usage(app)["intranet"] == 1
    act(app, seats.block, "bob")
    act(app, seats.unblock, "ann")
    assert person_state(app, "ann") == (True, "primary", "intranet", None, "intranet")
    assert usage(app)["intranet"] == 1


def test_a_move_into_a_full_pool_is_refused_and_the_person_stays(app, install_license):
    install_license(intranet=5, extranet=1)
    add(app, "eve", area="partners")
    add(app, "ian")
    with pytest.raises(seats.SeatLimitExceeded, match="extranet pool: 1 of 1"):
        act(app, seats.move, "ian", area="suppliers", readonly=False)
    assert person_state(app, "ian") == (True, "primary", "intranet", None, "intranet")
    assert usage(app) == {"intranet": 1, "extranet": 1, "readonly": 0}
    act(app, seats.move, "eve", area="primary", readonly=False)
    assert usage(app) == {"intranet": 2, "extranet": 0, "readonly": 0}
    act(app, seats.move, "ian", area="partners", readonly=False)
    assert person_state(app, "ian") == (True, "partners", "extranet", None, "extranet")
    act(app, seats.move, "ian", area="partners", readonly=True)
    assert usage(app) == {"intranet": 1, "extranet": 0, "readonly": 1}


def test_moving_a_blocked_person_needs_no_seat(app, install_license):
    install_license(extranet=0)
    add(app, "kim")
    act(app, seats.block, "kim")
    act(app, seats.move, "kim", area="partners", readonly=False)
    assert person_state(app, "kim") == (False, "partners", "extranet", BLOCKED_BY_ADMIN, None)
    with pytest.raises(seats.SeatLimitExceeded):
        act(app, seats.unblock, "kim")


def test_deleting_frees_the_seat(app, install_license):
    install_license(intranet=1)
    add(app, "dan")
    act(app, seats.delete, "dan")
    assert person_state(app, "dan") is None
    assert usage(app)["intranet"] == 0
    with app.app_context():
        assert wsgi.db.session.scalar(sa.select(sa.func.count()).select_from(Profile)) == 1
    add(app, "dora")
    assert usage(app)["intranet"] == 1


def test_the_administrator_account_never_counts_and_cannot_be_blocked_or_deleted(
    app, install_license
):
    install_license(intranet=0)
    assert usage(app)["intranet"] == 0
    assert person_state(app, "admin") == (True, "primary", "intranet", None, None)
    with pytest.raises(seats.PersonError, match="administrator account cannot be blocked"):
        act(app, seats.block, "admin")
    with pytest.raises(seats.PersonError, match="administrator account cannot be deleted"):
        act(app, seats.delete, "admin")
    assert person_state(app, "admin")[0] is True
    refused = [row[:3] for row in audit_rows(app) if row[2] == "refused"]
    assert refused == [("block", "admin", "refused"), ("delete", "admin", "refused")]


def test_unlimited_never_refuses(app, install_license):
    install_license(readonly="Unlimited")
    for number in range(30):
        add(app, f"reader{number}", readonly=True)
    assert usage(app)["readonly"] == 30


def test_a_limit_of_zero_refuses_the_first(app, install_license):
    install_license(extranet=0)
    with pytest.raises(seats.SeatLimitExceeded, match="extranet pool: 0 of 0"):
        add(app, "guest", area="partners")
    assert person_state(app, "guest") is None


def test_a_missing_max_key_is_zero(app, install_license):
    install_license(readonly=None)
    with pytest.raises(seats.SeatLimitExceeded, match="readonly pool: 0 of 0"):
        add(app, "reader", readonly=True)


def test_an_expired_license_refuses_everyone_new_but_keeps_the_active(app, install_license):
    install_license(intranet=10, Expires="2026-12-31")
    add(app, "old", now=datetime(2026, 12, 31, 23, 0))
    with app.app_context():
        session = wsgi.db.session
        later = datetime(2027, 1, 1, 0, 1)
        with pytest.raises(seats.SeatLimitExceeded) as refusal:
            seats.add_person(
                session,
                username="new",
                first_name="N",
                surname="W",
                email="",
                actor="t",
                now=later,
                path="test",
            )
        session.rollback()
    assert person_state(app, "new") is None
    assert person_state(app, "old")[0] is True
    assert refusal.value.pool == "intranet"
    assert "License expired on 2026-12-31" in str(refusal.value)


def test_an_expired_license_is_not_installed_and_the_old_one_stays(app, install_license):
    from intranet_licenses.licensing import LicenseRefused

    with pytest.raises(LicenseRefused, match="License expired on 2020-01-01"):
        install_license(intranet=0, Expires="2020-01-01", Issued="2019-01-01")
    add(app, "fine")
    assert usage(app)["intranet"] == 1


def test_host_code_adding_an_active_user_to_a_full_pool_is_refused_at_commit(app, install_license):
    install_license(intranet=1)
    with app.app_context():
        session = wsgi.db.session
        session.add(wsgi.User(username="first", first_name="F", surname="S", active=True))
        session.commit()
        session.add(wsgi.User(username="second", first_name="S", surname="S", active=True))
        with pytest.raises(seats.SeatLimitExceeded, match="intranet pool: 1 of 1"):
            session.commit()
        session.rollback()
    assert person_state(app, "first") == (True, "primary", "intranet", None, "intranet")
    assert person_state(app, "second") is None
    assert usage(app)["intranet"] == 1


def test_host_code_deactivating_and_reactivating_moves_the_seat(app, install_license):
    install_license(intranet=1)
    with app.app_context():
        session = wsgi.db.session
        session.add(wsgi.User(username="hosted", first_name="H", surname="S", active=True))
        session.commit()
        user = session.scalar(sa.select(wsgi.User).where(wsgi.User.username == "hosted"))
        user.active = False
        session.commit()
    assert usage(app)["intranet"] == 0
    assert person_state(app, "hosted")[3] == BLOCKED_BY_ADMIN
    add(app, "taker")
    with app.app_context():
        session = wsgi.db.session
        user = session.scalar(sa.select(wsgi.User).where(wsgi.User.username == "hosted"))
        user.active = True
        with pytest.raises(seats.SeatLimitExceeded):
            session.commit()
        session.rollback()
    assert person_state(app, "hosted")[0] is False
    assert ("block", "hosted", "ok", "host", "host", "intranet") in audit_rows(app)


def test_host_code_deleting_a_user_frees_the_seat(app, install_license):
    install_license(intranet=1)
    add(app, "gone")
    with app.app_context():
        session = wsgi.db.session
        session.delete(session.scalar(sa.select(wsgi.User).where(wsgi.User.username == "gone")))
        session.commit()
    assert usage(app)["intranet"] == 0


def test_usernames_are_unique_without_regard_to_case(app):
    add(app, "Maria")
    with pytest.raises(seats.PersonError, match="'Maria' already exists"):
        add(app, "maria")


def test_bad_fields_are_refused_with_a_reason(app):
    with pytest.raises(seats.PersonError, match="not a valid email address"):
        add(app, "x", email="not-an-email")
    with pytest.raises(seats.PersonError, match="first name and a surname are required"):
        add(app, "y", first_name=" ")
    with pytest.raises(seats.PersonError, match="Unknown area 'moon'"):
        add(app, "z", area="moon")
    assert count_users(app) == 1


def test_activate_waiting_takes_the_oldest_first(app, install_license):
    install_license(intranet=3)
    start = datetime(2026, 1, 1)
    for number in range(3):
        add(app, f"w{number}")
    with app.app_context():
        session = wsgi.db.session
        for number in range(3):
            user = seats.find_person(session, f"w{number}")
            seats.block(
                session,
                user,
                reason=AWAITING_LICENSE,
                actor="t",
                now=start + timedelta(days=3 - number),
                path="test",
            )
        session.commit()
    add(app, "a1")
    add(app, "a2")
    with app.app_context():
        result = seats.activate_waiting(wsgi.db.session, actor="t", now=utcnow(), path="test")
        wsgi.db.session.commit()
    assert result.activated == ["w2"]
    assert result.still_waiting == 2
    assert person_state(app, "w1")[3] == AWAITING_LICENSE
    assert usage(app)["intranet"] == 3


def test_every_seat_action_is_recorded(app, install_license):
    install_license(intranet=1)
    add(app, "rec")
    act(app, seats.block, "rec")
    act(app, seats.unblock, "rec")
    act(app, seats.move, "rec", area="partners", readonly=False)
    act(app, seats.delete, "rec")
    actions = [(a, s, o, p, who) for a, s, o, p, who, _ in audit_rows(app) if s == "rec"]
    assert actions == [
        ("add", "rec", "ok", "test", "tester"),
        ("block", "rec", "ok", "test", "tester"),
        ("unblock", "rec", "ok", "test", "tester"),
        ("move", "rec", "ok", "test", "tester"),
        ("delete", "rec", "ok", "test", "tester"),
    ]


def test_recount_finds_and_repairs_a_counter_changed_behind_its_back(app, runner):
    add(app, "c1")
    add(app, "c2")
    with app.app_context():
        wsgi.db.session.execute(
            sa.update(SeatCounter).where(SeatCounter.pool == "intranet").values(used=57)
        )
        wsgi.db.session.commit()
    result = runner.invoke(args=["licenses", "recount"])
    assert result.exit_code == 0, result.output
    assert "The intranet counter read 57; it now reads 2." in result.output
    assert usage(app)["intranet"] == 2
    result = runner.invoke(args=["licenses", "recount"])
    assert "nothing was repaired" in result.output


def test_recount_says_when_people_written_behind_its_back_take_a_pool_over(
    app, runner, install_license
):
    install_license(intranet=2)
    add(app, "c1")
    add(app, "c2")
    act(app, seats.block, "c2")
    with app.app_context():  # a bulk update the safety net cannot see
        wsgi.db.session.execute(sa.update(wsgi.User).values(active=True))
        wsgi.db.session.commit()
    add(app, "c3")  # the counter still reads 1: admitted
    result = runner.invoke(args=["licenses", "recount"])
    assert result.exit_code == 0, result.output
    assert "The intranet counter read 2; it now reads 3." in result.output
    assert (
        "The intranet pool is over its limit: 3 people are active for 2 seats. "
        "Block or delete 1, or request more licenses."
    ) in result.output
    with app.app_context():
        assert (
            wsgi.db.session.scalar(
                sa.select(sa.func.count()).where(AuditEvent.action == "exceeded")
            )
            == 1
        )


# Two requests acting on the same person at once ------------------------------------------


def _two_sessions(app):
    from sqlalchemy.orm import Session

    engine = wsgi.db.engine
    return Session(bind=engine), Session(bind=engine)


def _loaded(session, username):
    """The user, with its profile loaded and kept (the session's identity map is weak)."""
    user = session.scalar(sa.select(wsgi.User).where(wsgi.User.username == username))
    session.info["kept_profile"] = seats.profile_of(session, user)
    return user


@pytest.mark.parametrize("action", ["block", "unblock", "activate", "move"])
def test_the_same_action_twice_at_once_moves_the_counter_once(app, install_license, action):
    install_license(intranet=10, extranet=10)
    add(app, "twice")
    add(app, "other")
    if action in ("unblock", "activate"):
        reason = BLOCKED_BY_ADMIN if action == "unblock" else AWAITING_LICENSE
        act(app, seats.block, "twice", reason=reason)
    with app.app_context():
        first, second = _two_sessions(app)
        users = [_loaded(first, "twice"), _loaded(second, "twice")]  # both load the old state
        for session, user in zip((first, second), users, strict=True):
            if action == "block":
                seats.block(session, user, actor="t", now=utcnow(), path="test")
            elif action == "move":
                seats.move(
                    session, user, area="partners", readonly=False, actor="t", now=utcnow(),
                    path="test",
                )  # fmt: skip
            else:
                seats.unblock(session, user, actor="t", now=utcnow(), path="test")
            session.commit()
            session.close()
        findings = seats.recount(wsgi.db.session, actor="t", now=utcnow())
        wsgi.db.session.rollback()
    assert findings == []  # the counters match the profiles: nothing drifted
    expected = {
        "block": {"intranet": 1, "extranet": 0, "readonly": 0},
        "unblock": {"intranet": 2, "extranet": 0, "readonly": 0},
        "activate": {"intranet": 2, "extranet": 0, "readonly": 0},
        "move": {"intranet": 1, "extranet": 1, "readonly": 0},
    }[action]
    assert usage(app) == expected


@pytest.mark.parametrize("second_action", ["delete", "block", "move"])
def test_acting_on_a_person_deleted_a_moment_ago_is_refused(app, install_license, second_action):
    install_license(intranet=10, extranet=10)
    add(app, "gone")
    add(app, "other")
    with app.app_context():
        first, second = _two_sessions(app)
        users = [_loaded(first, "gone"), _loaded(second, "gone")]  # both load the old state
        seats.delete(first, users[0], actor="t", now=utcnow(), path="test")
        first.commit()
        first.close()
        with pytest.raises(seats.PersonError, match="gone no longer exists"):
            if second_action == "delete":
                seats.delete(second, users[1], actor="t", now=utcnow(), path="test")
            elif second_action == "block":
                seats.block(second, users[1], actor="t", now=utcnow(), path="test")
            else:
                seats.move(
                    second, users[1], area="partners", readonly=False, actor="t",
                    now=utcnow(), path="test",
                )  # fmt: skip
            second.flush()
        second.commit()  # as the pages do after a refusal: nothing of the person is written
        second.close()
        findings = seats.recount(wsgi.db.session, actor="t", now=utcnow())
        wsgi.db.session.rollback()
    assert findings == []  # the seat was freed once
    assert usage(app) == {"intranet": 1, "extranet": 0, "readonly": 0}


def test_a_move_racing_an_unblock_decides_from_the_unblocked_person(app, install_license):
    install_license(intranet=10, extranet=10, readonly=0)
    add(app, "racer", area="partners")
    act(app, seats.block, "racer")
    with app.app_context():
        first, second = _two_sessions(app)
        users = [_loaded(first, "racer"), _loaded(second, "racer")]  # both see them blocked
        seats.unblock(first, users[0], actor="t", now=utcnow(), path="test")
        first.commit()
        first.close()
        # Moving a blocked person needs no seat; this one is active now, and the read-only
        # pool has none: refused, and they stay where they are.
        with pytest.raises(seats.SeatLimitExceeded, match="readonly pool"):
            seats.move(
                second, users[1], area="partners", readonly=True, actor="t", now=utcnow(),
                path="test",
            )  # fmt: skip
        second.commit()
        second.close()
        findings = seats.recount(wsgi.db.session, actor="t", now=utcnow())
        wsgi.db.session.rollback()
    assert findings == []
    assert usage(app) == {"intranet": 0, "extranet": 1, "readonly": 0}
    assert person_state(app, "racer")[:3] == (True, "partners", "extranet")


def test_a_block_racing_a_move_leaves_no_seat_held(app, install_license):
    install_license(intranet=10, extranet=10)
    add(app, "racer")
    with app.app_context():
        first, second = _two_sessions(app)
        users = [_loaded(first, "racer"), _loaded(second, "racer")]
        seats.move(
            first, users[0], area="partners", readonly=False, actor="t", now=utcnow(),
            path="test",
        )  # fmt: skip
        first.commit()
        first.close()
        seats.block(second, users[1], actor="t", now=utcnow(), path="test")
        second.commit()
        second.close()
        findings = seats.recount(wsgi.db.session, actor="t", now=utcnow())
        wsgi.db.session.rollback()
    assert findings == []
    assert usage(app) == {"intranet": 0, "extranet": 0, "readonly": 0}
    assert person_state(app, "racer")[:3] == (False, "partners", "extranet")


def test_two_moves_of_one_person_to_different_pools_at_once(app, install_license):
    install_license(intranet=10, extranet=10, readonly=10)
    add(app, "mover")
    with app.app_context():
        first, second = _two_sessions(app)
        a, b = _loaded(first, "mover"), _loaded(second, "mover")
        seats.move(first, a, area="partners", readonly=False, actor="t", now=utcnow(), path="t")
        first.commit()
        seats.move(second, b, area="primary", readonly=True, actor="t", now=utcnow(), path="t")
        second.commit()
        first.close()
        second.close()
    active, area, pool, _reason, seat_pool = person_state(app, "mover")
    assert active and pool == seat_pool == seats.pool_for(area, True) == "readonly"
    assert usage(app) == {"intranet": 0, "extranet": 0, "readonly": 1}
    with app.app_context():
        assert seats.recount(wsgi.db.session, actor="t", now=utcnow()) == []
        wsgi.db.session.rollback()


def test_renaming_the_administrator_account_does_not_make_a_free_account(app, install_license):
    install_license(intranet=1)
    with app.app_context():
        session = wsgi.db.session
        admin = session.scalar(sa.select(wsgi.User).where(wsgi.User.username == "admin"))
        admin.username = "root"
        session.commit()  # root now takes the one seat
        session.add(wsgi.User(username="admin", first_name="New", surname="Admin", active=True))
        session.commit()  # the new 'admin' is the exempt account
        clone = session.scalar(sa.select(wsgi.User).where(wsgi.User.username == "admin"))
        clone.username = "admin_clone"
        with pytest.raises(seats.SeatLimitExceeded):
            session.commit()  # no longer the administrator: it needs a seat, none is free
        session.rollback()
        findings = seats.recount(session, actor="t", now=utcnow())
        session.rollback()
    assert findings == []
    assert person_state(app, "root")[4] == "intranet"
    assert person_state(app, "admin")[4] is None
    assert usage(app)["intranet"] == 1


def test_control_characters_and_long_lowercase_names_are_handled(app):
    with pytest.raises(seats.PersonError, match="contains a control character"):
        add(app, "nul\x00name")
    with pytest.raises(seats.PersonError, match="first name of 'tab' contains a control"):
        add(app, "tab", first_name="A\tB")
    long_name = "İ" * 255  # lower-cases to 510 characters
    add(app, "dotted", first_name=long_name)
    assert person_state(app, "dotted")[0] is True


def _drift_behind_the_back(app):
    """Change users and profiles with plain SQL, as a host's script or a restore might."""
    add(app, "seated")  # host turns it off: loses its seat, blocked by an administrator
    add(app, "waiting")
    act(app, seats.block, "waiting")  # host turns it on again: takes its seat back
    add(app, "marked")  # wrongly marked as the administrator account
    with app.app_context():
        session = wsgi.db.session
        users = {u.username: u.id for u in session.scalars(sa.select(wsgi.User))}
        session.execute(
            sa.update(wsgi.User).where(wsgi.User.username == "seated").values(active=False)
        )
        session.execute(
            sa.update(wsgi.User).where(wsgi.User.username == "waiting").values(active=True)
        )
        session.execute(
            sa.update(Profile).where(Profile.user_id == users["marked"]).values(exempt=True)
        )
        session.execute(  # a user from before the extension: no profile yet
            sa.insert(wsgi.User).values(
                username="older", first_name="O", surname="Lder", email="", active=True,
                is_sysadmin=False, is_people_admin=False, created_at=utcnow(),
            )
        )  # fmt: skip
        session.commit()


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_recount_repairs_profiles_changed_behind_its_back(database, request, app, runner):
    if database == "postgresql":
        from conftest import app_config

        url = request.getfixturevalue("postgres_url")
        app = wsgi.create_app(
            app_config(url, request.getfixturevalue("vendor_key")),
            instance_path=str(request.getfixturevalue("tmp_path") / "pg"),
        )
        assert app.test_cli_runner().invoke(args=["init-db", "--password", "x"]).exit_code == 0
        with app.app_context():
            license_text = request.getfixturevalue("make_license")()
            licensing.install(wsgi.db.session, license_text, actor="t", now=utcnow(), path="t")
            wsgi.db.session.commit()
        runner = app.test_cli_runner()
    _drift_behind_the_back(app)
    result = runner.invoke(args=["licenses", "recount"])
    assert result.exit_code == 0, result.output
    assert "Created profiles for 1 people who had none." in result.output
    assert "Corrected 1 profiles marked wrongly as the administrator account" in result.output
    assert "Corrected the seat of 3 profiles." in result.output  # seated, waiting, older
    assert person_state(app, "seated") == (False, "primary", "intranet", BLOCKED_BY_ADMIN, None)
    assert person_state(app, "waiting") == (True, "primary", "intranet", None, "intranet")
    assert person_state(app, "marked") == (True, "primary", "intranet", None, "intranet")
    assert person_state(app, "older") == (True, "primary", "intranet", None, "intranet")
    assert usage(app)["intranet"] == 3
    again = app.test_cli_runner().invoke(args=["licenses", "recount"])
    assert "nothing was repaired" in again.output
    with app.app_context():
        wsgi.dispose_engines()


# Many at once, waiting when full (directory sync, rule 3) ------------------------------


def admit(app, names, **kwargs):
    """seats.admit_or_wait for people ``names`` (primary area unless ``area``); commits."""
    area = kwargs.pop("area", "primary")
    with app.app_context():
        session = wsgi.db.session
        result = seats.admit_or_wait(
            session,
            [
                seats.NewPerson(
                    name,
                    "First",
                    "Last",
                    f"{name}@example.com",
                    area=area,
                    directory_id=f"id-{name}",
                )
                for name in names
            ],  # fmt: skip
            source="directory",
            path="directory",
            actor="tester",
            now=kwargs.pop("now", utcnow()),
        )
        session.commit()
        return [(p.username, active) for p, active in result.created], [
            (p.username, str(why)) for p, why in result.refused
        ]


def added(app):
    """(subject, outcome, detail) of every 'add' audit row."""
    with app.app_context():
        query = sa.select(AuditEvent).where(AuditEvent.action == "add").order_by(AuditEvent.id)
        return [(e.subject, e.outcome, e.detail) for e in wsgi.db.session.scalars(query)]


def test_admit_or_wait_admits_the_first_while_seats_are_free_and_the_rest_wait(
    app, install_license
):
    install_license(intranet=3, extranet=1)
    add(app, "early")
    created, refused = admit(app, ["a", "b", "c", "d"])
    assert created == [("a", True), ("b", True), ("c", False), ("d", False)]
    assert refused == []
    assert usage(app)["intranet"] == 3
    assert person_state(app, "c")[0] is False
    with app.app_context():
        rows = dict(
            wsgi.db.session.execute(
                sa.select(Profile.username_key, Profile.block_reason).where(
                    Profile.username_key.in_(["a", "c", "d"])
                )
            ).all()
        )
        assert rows == {"a": None, "c": AWAITING_LICENSE, "d": AWAITING_LICENSE}
    # Every person has an audit row; the waiting ones say why.
    adds = added(app)
    assert [(s, o) for s, o, _ in adds[-4:]] == [
        ("a", "ok"),
        ("b", "ok"),
        ("c", "waiting"),
        ("d", "waiting"),
    ]
    assert "No free seat in the intranet pool: 3 of 3" in adds[-1][2]
    # Another pool is counted on its own; a taken username (any case) is not created.
    created, refused = admit(app, ["A", "ada"], area="partners")
    assert created == [("ada", True)]
    assert refused[0][0] == "A" and "already exists" in refused[0][1]
    assert usage(app) == {"intranet": 3, "extranet": 1, "readonly": 0}


def test_admit_or_wait_asks_again_when_seats_went_meanwhile(app, install_license, monkeypatch):
    """Another worker takes seats between the read and the flush: the conditional UPDATE
    refuses, nothing is written, and the batch is asked again with what is really free."""
    install_license(intranet=4)
    real_usage = seats.usage
    calls = []

    def stale_usage(session):
        calls.append(1)
        found = real_usage(session)
        if len(calls) == 1:  # the first read misses two seats another worker just took
            session.connection().execute(
                sa.update(SeatCounter).where(SeatCounter.pool == "intranet").values(used=2)
            )
        return found

    monkeypatch.setattr(seats, "usage", stale_usage)
    created, _ = admit(app, ["p1", "p2", "p3", "p4"])
    assert len(calls) >= 2  # read again after the refused flush
    assert created == [("p1", True), ("p2", True), ("p3", False), ("p4", False)]
    assert usage(app)["intranet"] == 4  # the two "taken elsewhere" plus p1 and p2: never 6


def test_admit_or_wait_with_an_invalid_license_admits_nobody(app, install_license):
    install_license(intranet=10, Expires="2026-12-31")
    created, _ = admit(app, ["x1", "x2"], now=datetime(2027, 1, 1, 0, 1))
    assert created == [("x1", False), ("x2", False)]
    assert usage(app)["intranet"] == 0
    assert "License expired on 2026-12-31" in added(app)[-1][2]


# The field rules every path applies -------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "named"),
    [
        ("\ufeffalice", "U+FEFF ZERO WIDTH NO-BREAK SPACE"),
        ("bob\u200b", "U+200B ZERO WIDTH SPACE"),
        ("eve\u202etxt.exe", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("soft\u00adhyphen", "U+00AD SOFT HYPHEN"),
    ],
)
def test_a_username_with_an_invisible_character_is_refused_by_name(app, username, named):
    before = (count_users(app), usage(app))
    with pytest.raises(seats.PersonError) as refused:
        add(app, username)
    assert named in str(refused.value) and "invisible character" in str(refused.value)
    assert (count_users(app), usage(app)) == before


def test_a_name_may_hold_the_joiners_but_no_other_invisible_character(app):
    with pytest.raises(seats.PersonError, match="first name of 'ann' contains U[+]200B"):
        add(app, "ann", first_name="An\u200bn")
    with pytest.raises(seats.PersonError, match="surname of 'ann' contains U[+]FEFF"):
        add(app, "ann", surname="\ufeffSmith")
    add(app, "maryam", first_name="\u0645\u0631\u06cc\u200c\u0645")  # ZWNJ, as Persian writes
    assert person_state(app, "maryam")[0] is True
    assert person_state(app, "ann") is None


def test_a_name_over_255_characters_is_refused_in_a_sentence(app):
    with pytest.raises(seats.PersonError, match="first name of 'long' is longer than 255"):
        add(app, "long", first_name="x" * 300)
    with pytest.raises(seats.PersonError, match="surname of 'long' is longer than 255"):
        add(app, "long", surname="x" * 256)
    assert person_state(app, "long") is None


def test_usernames_are_compared_in_unicode_normal_form_c(app):
    before = count_users(app)
    add(app, "\u00e9lise")  # é as one character
    for other in ("e\u0301lise", "E\u0301LISE"):  # e + COMBINING ACUTE ACCENT
        with pytest.raises(seats.PersonError, match="already exists"):
            add(app, other)
    with app.app_context():
        found = seats.find_person(wsgi.db.session, "e\u0301lise")
        assert found.username == "\u00e9lise"
    assert count_users(app) == before + 1


def test_the_username_check_sees_existing_and_pending_people_whatever_the_case(app):
    """add_person reads the username with the seat counter in one statement; the same rules."""
    add(app, "Lena")
    with pytest.raises(seats.PersonError, match="'Lena' already exists"):
        add(app, "LENA")
    with app.app_context():
        session = wsgi.db.session
        # Added through the ORM and not flushed yet: counted as the ORM's autoflush would.
        session.add(wsgi.User(username="Pending", first_name="P", surname="Q", email=""))
        with pytest.raises(seats.PersonError, match="'Pending' already exists"):
            seats.add_person(
                session,
                username="pending",
                first_name="P",
                surname="Q",
                email="",
                actor="tester",
                now=utcnow(),
                path="test",
            )
        session.rollback()
    assert usage(app)["intranet"] == 1


def test_a_seat_taken_between_the_reading_and_the_update_is_refused_and_audited_once(
    app, install_license, monkeypatch
):
    """The race for the last seat: the reading saw a free seat, the conditional UPDATE none.

    The admission's audit row, written before the flush, is withdrawn; the refusal's row is
    the only one for that person.
    """
    install_license(intranet=1)
    add(app, "winner")
    monkeypatch.setattr(seats, "_refusal_by_reading", lambda *args: None)  # a stale reading
    with pytest.raises(seats.SeatLimitExceeded, match="1 of 1 seats are in use"):
        add(app, "loser")
    rows = [(subject, outcome) for _, subject, outcome, *_ in audit_rows(app, "add")]
    assert rows == [("winner", "ok"), ("loser", "refused")]
    assert usage(app)["intranet"] == 1
    assert count_users(app) == 2  # the administrator and the winner


def test_the_figures_read_every_pool_and_a_database_without_counter_rows(
    app, install_license, make_person
):
    install_license(intranet=5, extranet=3)
    make_person("ann")
    make_person("bob")
    make_person("eve", area="partners")
    make_person("wai", area="partners", blocked=AWAITING_LICENSE)
    make_person("cid", readonly=True, blocked=AWAITING_LICENSE)
    with app.app_context():
        session = wsgi.db.session
        reading = seats.license_and_figures(session, utcnow())
        shown = [(f.pool, f.used, f.limit, f.waiting) for f in reading.figures]
        assert shown == [("intranet", 2, 5, 0), ("extranet", 1, 3, 1), ("readonly", 0, 10, 1)]
        assert reading.current.status.valid and reading.license_state_seen == "valid"
        session.execute(sa.delete(SeatCounter))  # a broken schema: the pages still show
        reading = seats.license_and_figures(session, utcnow())
        assert [(f.used, f.waiting) for f in reading.figures] == [(0, 0)] * 3
        assert reading.current.status.valid and reading.license_state_seen == "valid"
        session.rollback()

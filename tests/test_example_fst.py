"""The extension mounted in the Flask-Security-Too example host (examples/fst_host)."""

from __future__ import annotations

import html

import pytest
import sqlalchemy as sa

from examples.fst_host import app as fst
from examples.fst_host.models import User, db
from intranet_licenses import SeatLimitExceeded

PASSWORD = "fst-password"
PAGES = ["/admin/licenses/", "/admin/licenses/summary", "/admin/licenses/people"]
HOST_LAYOUT = 'id="fst-host-header"'


@pytest.fixture
def fst_app(tmp_path, vendor_key):
    app = fst.create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test-secret",
            "WTF_CSRF_ENABLED": False,
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'fst.db'}",
            "LICENSES_PUBLIC_KEYS": [str(vendor_key.public_path)],
            "LICENSES_SITE_NAME": "intranet.example.com",
            # fast hashing for tests; the host itself keeps passlib's default rounds
            "SECURITY_PASSWORD_HASH_PASSLIB_OPTIONS": {"pbkdf2_sha512__rounds": 1000},
        },
        instance_path=str(tmp_path / "instance"),
    )
    result = app.test_cli_runner().invoke(args=["init-host", "--password", PASSWORD])
    assert result.exit_code == 0, result.output
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def fst_client(fst_app):
    return fst_app.test_client()


def login(client, username: str, password: str = PASSWORD):
    return client.post("/login", data={"username": username, "password": password})


def install(client, license_text: str):
    """Install a license through the License page, as the host's administrator."""
    assert login(client, "admin").status_code == 302
    response = client.post(
        "/admin/licenses/install", data={"license_text": license_text}, follow_redirects=True
    )
    assert "The new license is installed." in response.text
    client.post("/logout")


def create_user(username: str, roles=()):
    """The host's own creation path: datastore.create_user, then commit."""
    fst.datastore.create_user(
        username=username,
        email=f"{username}@example.com",
        first_name=username.capitalize(),
        last_name="Tester",
        password=fst.hash_password(PASSWORD),
        roles=list(roles),
    )
    db.session.commit()


def usage(app) -> int:
    with app.app_context():
        response = app.test_cli_runner().invoke(args=["licenses", "status"])
    return response.output


def test_create_user_is_refused_at_a_full_pool_and_deactivating_frees_a_seat(
    fst_app, fst_client, make_license
):
    install(fst_client, make_license(intranet=3))
    with fst_app.app_context():
        for name in ("anna", "bjorn", "chloe"):
            create_user(name)

        with pytest.raises(SeatLimitExceeded) as refused:
            create_user("dmitri")
        db.session.rollback()
        assert str(refused.value).startswith(
            "No free seat in the intranet pool: 3 of 3 seats are in use"
        )
        assert fst.datastore.find_user(username="dmitri") is None

        # Block one through the host's own path: the seat is free at once.
        fst.datastore.deactivate_user(fst.datastore.find_user(username="bjorn"))
        db.session.commit()
        assert "Number of Users 2 (2 in intranet area)" in usage(fst_app)

        create_user("dmitri")
        assert fst.datastore.find_user(username="dmitri").active is True
    assert "Number of Users 3 (3 in intranet area)" in usage(fst_app)

    # The blocked person cannot log in, and is told why in FST's own login form.
    response = login(fst_client, "bjorn")
    assert response.status_code == 200
    assert "Your account is blocked" in html.unescape(response.text)
    assert fst_client.get("/").status_code == 302


def test_reactivating_through_the_host_is_refused_when_the_pool_is_full(
    fst_app, fst_client, make_license
):
    install(fst_client, make_license(intranet=1))
    with fst_app.app_context():
        create_user("anna")
        fst.datastore.deactivate_user(fst.datastore.find_user(username="anna"))
        db.session.commit()
        create_user("bjorn")
        fst.datastore.activate_user(fst.datastore.find_user(username="anna"))
        with pytest.raises(SeatLimitExceeded, match="1 of 1 seats are in use"):
            db.session.commit()
        db.session.rollback()
        assert fst.datastore.find_user(username="anna").active is False


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_inside_the_host_layout_for_its_administrator(
    fst_app, fst_client, make_license, page
):
    install(fst_client, make_license(intranet=5))
    with fst_app.app_context():
        create_user("jennifer")
    login(fst_client, "admin")
    response = fst_client.get(page)
    assert response.status_code == 200
    assert HOST_LAYOUT in response.text
    assert "FST Example Intranet" in response.text
    text = html.unescape(response.text)
    expected = {
        "/admin/licenses/": "License is valid.",
        "/admin/licenses/summary": "Number of Users 1 (1 in intranet area)",
        "/admin/licenses/people": "jennifer@example.com",
    }[page]
    assert expected in text


@pytest.mark.parametrize("page", PAGES)
def test_an_ordinary_user_of_the_host_gets_403(fst_app, fst_client, make_license, page):
    install(fst_client, make_license())
    with fst_app.app_context():
        create_user("jennifer")
    assert fst_client.get(page).status_code == 302  # anonymous: to FST's login
    assert "/login" in fst_client.get(page).headers["Location"]
    login(fst_client, "jennifer")
    assert fst_client.get(page).status_code == 403


def test_host_roles_map_to_the_extension_roles(fst_app, fst_client, make_license):
    install(fst_client, make_license())
    with fst_app.app_context():
        create_user("samuel", roles=["sysadmin"])
        create_user("petra", roles=["people-admin"])
    login(fst_client, "samuel")
    assert fst_client.get("/admin/licenses/").status_code == 200
    assert fst_client.get("/admin/licenses/people").status_code == 403
    fst_client.post("/logout")
    login(fst_client, "petra")
    assert fst_client.get("/admin/licenses/people").status_code == 200
    assert fst_client.get("/admin/licenses/").status_code == 403


def test_people_page_adds_a_host_user_that_can_be_used_by_flask_security(
    fst_app, fst_client, make_license
):
    install(fst_client, make_license(intranet=5))
    login(fst_client, "admin")
    form = {"username": "zoe", "first_name": "Zoë", "surname": "Larsen", "area": "primary"}
    response = fst_client.post(
        "/admin/licenses/people/add", data={**form, "email": ""}, follow_redirects=True
    )
    assert "zoe: an email address is required." in html.unescape(response.text)
    response = fst_client.post(
        "/admin/licenses/people/add",
        data={**form, "email": "admin@example.com"},
        follow_redirects=True,
    )
    assert "already has the email address admin@example.com" in html.unescape(response.text)
    response = fst_client.post(
        "/admin/licenses/people/add",
        data={**form, "email": "zoe@example.com"},
        follow_redirects=True,
    )
    assert "zoe was added and is active." in response.text
    with fst_app.app_context():
        zoe = db.session.scalar(sa.select(User).where(User.username == "zoe"))
        assert (zoe.last_name, zoe.active, len(zoe.fs_uniquifier)) == ("Larsen", True, 32)
        assert fst.datastore.find_user(fs_uniquifier=zoe.fs_uniquifier) is not None


def test_a_person_blocked_through_the_host_is_stopped_on_their_next_request(
    fst_app, fst_client, make_license
):
    install(fst_client, make_license())
    with fst_app.app_context():
        create_user("samuel", roles=["sysadmin"])
    login(fst_client, "samuel")
    assert fst_client.get("/admin/licenses/summary").status_code == 200
    with fst_app.app_context():
        fst.datastore.deactivate_user(fst.datastore.find_user(username="samuel"))
        db.session.commit()
    response = fst_client.get("/admin/licenses/summary")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_self_registration_at_a_full_pool_says_why_instead_of_a_500(
    fst_app, fst_client, make_license
):
    install(fst_client, make_license(intranet=1))
    with fst_app.app_context():
        create_user("anna")
    form = {
        "email": "newcomer@example.com",
        "username": "newcomer",
        "password": "Secret-12345!x",
        "password_confirm": "Secret-12345!x",
    }
    response = fst_client.post("/register", data=form)
    assert response.status_code == 409
    assert HOST_LAYOUT in response.text
    assert "No free seat in the intranet pool: 1 of 1 seats are in use" in response.text
    with fst_app.app_context():
        assert fst.datastore.find_user(username="newcomer") is None
        fst.datastore.deactivate_user(fst.datastore.find_user(username="anna"))
        db.session.commit()
    response = fst_client.post("/register", data=form)
    assert response.status_code == 302
    with fst_app.app_context():
        assert fst.datastore.find_user(username="newcomer").active is True

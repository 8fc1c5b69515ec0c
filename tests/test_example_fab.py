"""The extension mounted in the Flask-AppBuilder example host (examples/fab_host)."""

from __future__ import annotations

import html
import shutil

import pytest
import sqlalchemy as sa
from flask import current_app
from flask_appbuilder.security.sqla.models import RegisterUser, User

from examples.fab_host import app as fab
from intranet_licenses import last_refusal

PASSWORD = "fab-password"
PAGES = ["/admin/licenses/", "/admin/licenses/summary", "/admin/licenses/people"]
REFUSAL = "No free seat in the intranet pool: {used} of {limit} seats are in use"


def fab_config(path, vendor_key, **extra) -> dict:
    return {
        "TESTING": True,
        "SECRET_KEY": "test-secret",
        "WTF_CSRF_ENABLED": False,
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{path}",
        "LICENSES_PUBLIC_KEYS": [str(vendor_key.public_path)],
        "LICENSES_SITE_NAME": "intranet.example.com",
        "FAB_PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",  # fast; FAB defaults to scrypt
        **extra,
    }


@pytest.fixture(scope="session")
def fab_template(tmp_path_factory, vendor_key):
    """FAB's database made once by the host's own init-host (FAB commits each permission
    on its own, about 150 commits, so this is not repeated for every test)."""
    folder = tmp_path_factory.mktemp("fab")
    app = fab.create_app(fab_config(folder / "fab.db", vendor_key), str(folder / "instance"))
    result = app.test_cli_runner().invoke(args=["init-host", "--password", PASSWORD])
    assert result.exit_code == 0, result.output
    with app.app_context():
        fab.db.engine.dispose()
    return folder / "fab.db"


@pytest.fixture
def fab_app(tmp_path, vendor_key, fab_template):
    shutil.copy(fab_template, tmp_path / "fab.db")
    app = fab.create_app(
        fab_config(tmp_path / "fab.db", vendor_key, FAB_UPDATE_PERMS=False),
        instance_path=str(tmp_path / "instance"),
    )
    yield app
    with app.app_context():
        fab.db.engine.dispose()


@pytest.fixture
def fab_client(fab_app):
    return fab_app.test_client()


def text(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def login(client, username: str, password: str = PASSWORD):
    return client.post("/login/", data={"username": username, "password": password})


def install(client, license_text: str):
    """Install a license through the License page, as FAB's Admin."""
    assert login(client, "admin").status_code == 302
    response = client.post(
        "/admin/licenses/install", data={"license_text": license_text}, follow_redirects=True
    )
    assert "The new license is installed." in text(response)
    client.get("/logout/")


def add_user(username: str, role: str = "Public"):
    """The host's own creation call: the security manager's add_user."""
    sm = current_app.appbuilder.sm
    return sm.add_user(
        username, username.capitalize(), "Tester", f"{username}@example.com",
        sm.find_role(role), PASSWORD,
    )  # fmt: skip


def user_form(username: str, role_id: int, active: bool = True, **extra) -> dict:
    form = {
        "first_name": username.capitalize(),
        "last_name": "Tester",
        "username": username,
        "email": f"{username}@example.com",
        "roles": [str(role_id)],
        **extra,
    }
    if active:
        form["active"] = "y"
    return form


def find(app, username: str):
    with app.app_context():
        return fab.db.session.scalar(sa.select(User).where(User.username == username))


def status(app) -> str:
    return app.test_cli_runner().invoke(args=["licenses", "status"]).output


def test_add_user_is_refused_at_a_full_pool_and_deactivating_frees_a_seat(
    fab_app, fab_client, make_license
):
    install(fab_client, make_license(intranet=3))
    with fab_app.app_context():
        assert all(add_user(name) for name in ("anna", "bjorn", "chloe"))
        assert add_user("dmitri") is False  # FAB logs the error and returns False ...
        refusal = last_refusal(current_app.appbuilder.sm.session)  # ... the extension keeps why
        assert str(refusal).startswith(REFUSAL.format(used=3, limit=3))
        public = current_app.appbuilder.sm.find_role("Public").id
    assert find(fab_app, "dmitri") is None

    # Block one through FAB's user edit form: the seat is free at once.
    bjorn = find(fab_app, "bjorn")
    login(fab_client, "admin")
    response = fab_client.post(
        f"/users/edit/{bjorn.id}", data=user_form("bjorn", public, active=False)
    )
    assert response.status_code == 302
    assert find(fab_app, "bjorn").active is False
    assert "Number of Users 2 (2 in intranet area)" in status(fab_app)

    with fab_app.app_context():
        assert add_user("dmitri") is not False
    assert find(fab_app, "dmitri").active is True
    assert "Number of Users 3 (3 in intranet area)" in status(fab_app)

    # Re-activating bjorn through the edit form is refused with the extension's message.
    response = fab_client.post(
        f"/users/edit/{bjorn.id}", data=user_form("bjorn", public), follow_redirects=True
    )
    assert REFUSAL.format(used=3, limit=3) in text(response)
    assert find(fab_app, "bjorn").active is False

    # The blocked person cannot log in, and FAB's login page says why.
    fab_client.get("/logout/")
    response = login(fab_client, "bjorn")
    assert "Your account is blocked" in text(fab_client.get("/login/"))
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_user_add_form_shows_the_extensions_refusal(fab_app, fab_client, make_license):
    install(fab_client, make_license(intranet=1))
    with fab_app.app_context():
        assert add_user("anna") is not False
        public = current_app.appbuilder.sm.find_role("Public").id
    login(fab_client, "admin")
    form = user_form("bjorn", public, password="Secret-123", conf_password="Secret-123")
    response = fab_client.post("/users/add", data=form, follow_redirects=True)
    assert REFUSAL.format(used=1, limit=1) in text(response)
    assert find(fab_app, "bjorn") is None

    # Block anna through the same admin views, then the add form succeeds.
    anna = find(fab_app, "anna")
    fab_client.post(f"/users/edit/{anna.id}", data=user_form("anna", public, active=False))
    response = fab_client.post("/users/add", data=form, follow_redirects=True)
    assert "Added Row" in text(response)
    assert find(fab_app, "bjorn").active is True
    assert "Number of Users 1 (1 in intranet area)" in status(fab_app)


def test_self_registration_is_refused_with_the_extensions_message(
    fab_app, fab_client, make_license
):
    install(fab_client, make_license(intranet=1))
    with fab_app.app_context():
        assert add_user("anna") is not False
    form = {
        "username": "newcomer",
        "first_name": "New",
        "last_name": "Comer",
        "email": "newcomer@example.com",
        "password": "Secret-123",
        "conf_password": "Secret-123",
    }
    response = fab_client.post("/register/form", data=form)
    assert response.status_code == 302
    with fab_app.app_context():
        activation = fab.db.session.scalar(
            sa.select(RegisterUser.registration_hash).where(RegisterUser.username == "newcomer")
        )
    response = fab_client.get(f"/register/activation/{activation}", follow_redirects=True)
    assert REFUSAL.format(used=1, limit=1) in text(response)
    assert find(fab_app, "newcomer") is None

    install(fab_client, make_license(intranet=2))
    response = fab_client.get(f"/register/activation/{activation}", follow_redirects=True)
    assert response.status_code == 200
    assert find(fab_app, "newcomer").active is True


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_inside_fabs_layout_for_its_admin(
    fab_app, fab_client, make_license, page
):
    install(fab_client, make_license(intranet=5))
    with fab_app.app_context():
        assert add_user("jennifer") is not False
    login(fab_client, "admin")
    response = fab_client.get(page)
    assert response.status_code == 200
    body = text(response)
    assert 'class="navbar' in body and "FAB Example Intranet" in body  # FAB's navbar
    assert "css/bootstrap.min.css" in body
    expected = {
        "/admin/licenses/": "License is valid.",
        "/admin/licenses/summary": "Number of Users 1 (1 in intranet area)",
        "/admin/licenses/people": "jennifer@example.com",
    }[page]
    assert expected in body


@pytest.mark.parametrize("page", PAGES)
def test_an_ordinary_fab_user_gets_403(fab_app, fab_client, make_license, page):
    install(fab_client, make_license())
    with fab_app.app_context():
        assert add_user("jennifer") is not False
    response = fab_client.get(page)
    assert response.status_code == 302 and "/login/" in response.headers["Location"]
    login(fab_client, "jennifer")
    assert fab_client.get(page).status_code == 403


def test_fab_roles_map_to_the_extension_roles(fab_app, fab_client, make_license):
    install(fab_client, make_license())
    with fab_app.app_context():
        assert add_user("samuel", "Sysadmin") is not False
        assert add_user("petra", "People Admin") is not False
    login(fab_client, "samuel")
    assert fab_client.get("/admin/licenses/summary").status_code == 200
    assert fab_client.get("/admin/licenses/people").status_code == 403
    fab_client.get("/logout/")
    login(fab_client, "petra")
    assert fab_client.get("/admin/licenses/people").status_code == 200
    assert fab_client.get("/admin/licenses/").status_code == 403


def test_people_page_and_fab_user_admin_share_the_seats(fab_app, fab_client, make_license):
    install(fab_client, make_license(intranet=1))
    login(fab_client, "admin")
    form = {"username": "zoe", "first_name": "Zoë", "surname": "Larsen", "area": "primary"}
    response = fab_client.post(
        "/admin/licenses/people/add", data={**form, "email": ""}, follow_redirects=True
    )
    assert "zoe: an email address is required." in text(response)
    response = fab_client.post(
        "/admin/licenses/people/add",
        data={**form, "email": "zoe@example.com"},
        follow_redirects=True,
    )
    assert "zoe was added and is active." in text(response)
    zoe = find(fab_app, "zoe")
    assert (zoe.first_name, zoe.last_name, zoe.active) == ("Zoë", "Larsen", True)
    with fab_app.app_context():
        assert add_user("anna") is False

    # Deleting zoe in FAB's user admin frees the seat.
    assert fab_client.post(f"/users/delete/{zoe.id}").status_code == 302
    assert find(fab_app, "zoe") is None
    with fab_app.app_context():
        assert add_user("anna") is not False


def test_a_person_blocked_in_fabs_user_admin_is_stopped_on_their_next_request(
    fab_app, fab_client, make_license
):
    install(fab_client, make_license())
    with fab_app.app_context():
        assert add_user("samuel", "Sysadmin") is not False
        sysadmin = current_app.appbuilder.sm.find_role("Sysadmin").id
    samuel = fab_app.test_client()
    login(samuel, "samuel")
    assert samuel.get("/admin/licenses/summary").status_code == 200
    login(fab_client, "admin")
    user_id = find(fab_app, "samuel").id
    fab_client.post(f"/users/edit/{user_id}", data=user_form("samuel", sysadmin, active=False))
    assert "Number of Users 0 (0 in intranet area)" in status(fab_app)
    response = samuel.get("/admin/licenses/summary")
    assert response.status_code == 302 and "/login/" in response.headers["Location"]

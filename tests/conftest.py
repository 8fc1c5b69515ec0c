"""Shared fixtures: the demo app on a fresh database, client, CLI runner, logins, factories."""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from werkzeug.security import generate_password_hash

import wsgi
from intranet_licenses import licensing, seats
from intranet_licenses.license_file import generate_key_pair, load_private_key, sign_text
from intranet_licenses.models import BLOCKED_BY_ADMIN, utcnow

PASSWORD = "test-password"
HASH_METHOD = "pbkdf2:sha256:1000"  # fast; the demo itself uses scrypt

LIMIT_KEYS = {
    "intranet": "MAX_USERS",
    "extranet": "MAX_EXTRANET_USERS",
    "readonly": "MAX_READONLY_USERS",
}


@dataclass(frozen=True)
class VendorKey:
    private_path: Path
    public_path: Path
    key: object


@pytest.fixture(scope="session")
def vendor_key(tmp_path_factory) -> VendorKey:
    folder = tmp_path_factory.mktemp("vendor")
    private_pem, public_pem = generate_key_pair()
    (folder / "private.pem").write_bytes(private_pem)
    (folder / "public.pem").write_bytes(public_pem)
    return VendorKey(folder / "private.pem", folder / "public.pem", load_private_key(private_pem))


def app_config(database_uri: str, vendor_key: VendorKey, **extra) -> dict:
    return {
        "TESTING": True,
        "SECRET_KEY": "test-secret",
        "WTF_CSRF_ENABLED": False,
        "SQLALCHEMY_DATABASE_URI": database_uri,
        "LICENSES_PUBLIC_KEYS": [str(vendor_key.public_path)],
        "LICENSES_VENDOR_PRIVATE_KEY": str(vendor_key.private_path),
        "LICENSES_SITE_NAME": "intranet.example.com",
        "DEMO_PASSWORD_METHOD": HASH_METHOD,
        **extra,
    }


def license_fields(**overrides) -> dict[str, str]:
    """A license's fields; ``intranet=10`` sets MAX_USERS, a value of None drops the key."""
    fields = {
        "Registered-To": "Test Corporation",
        "Host-Id": "TEST-1",
        "Host-Name": "*.example.com",
        "Issued": "2026-01-01",
        "Expires": "Never",
        "MAX_USERS": "100",
        "MAX_EXTRANET_USERS": "20",
        "MAX_READONLY_USERS": "10",
    }
    for name, value in overrides.items():
        key = LIMIT_KEYS.get(name, name)
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = str(value)
    return fields


@pytest.fixture
def make_license(vendor_key):
    """Signed license text with the test vendor key: ``make_license(intranet=5)``."""

    def make(**overrides) -> str:
        return sign_text(license_fields(**overrides), vendor_key.key)

    return make


@pytest.fixture(scope="session")
def template_db(tmp_path_factory, vendor_key) -> Path:
    """A database made once by the demo's own init-db (schema, migrations, admin)."""
    folder = tmp_path_factory.mktemp("template")
    path = folder / "intranet.db"
    app = wsgi.create_app(
        app_config(f"sqlite:///{path}", vendor_key), instance_path=str(folder / "instance")
    )
    result = app.test_cli_runner().invoke(args=["init-db", "--password", PASSWORD])
    assert result.exit_code == 0, result.output
    with app.app_context():
        wsgi.dispose_engines()
    return path


@pytest.fixture
def app(tmp_path, template_db, vendor_key, make_license):
    """The demo app on its own copy of the template database, with a license installed."""
    path = tmp_path / "intranet.db"
    shutil.copy(template_db, path)
    app = wsgi.create_app(
        app_config(f"sqlite:///{path}", vendor_key), instance_path=str(tmp_path / "instance")
    )
    with app.app_context():
        licensing.install(wsgi.db.session, make_license(), actor="test", now=utcnow(), path="test")
        wsgi.db.session.commit()
    yield app
    with app.app_context():
        wsgi.dispose_engines()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


class AuthActions:
    def __init__(self, client):
        self._client = client

    def login(self, username: str, password: str = PASSWORD):
        response = self._client.post("/login", data={"username": username, "password": password})
        return response

    def logout(self):
        return self._client.post("/logout")


@pytest.fixture
def auth(client) -> AuthActions:
    return AuthActions(client)


@pytest.fixture
def install_license(app, make_license):
    """Install a license with these limits in the app: ``install_license(intranet=3)``."""

    def install(**overrides):
        with app.app_context():
            licensing.install(
                wsgi.db.session, make_license(**overrides), actor="test", now=utcnow(), path="test"
            )
            wsgi.db.session.commit()

    return install


@pytest.fixture
def make_person(app):
    """Create a person through the seat service; returns their user id."""

    def make(
        username: str,
        *,
        area: str = "primary",
        readonly: bool = False,
        blocked: str | None = None,
        sysadmin: bool = False,
        people_admin: bool = False,
        first_name: str | None = None,
        surname: str = "Tester",
        email: str | None = None,
    ) -> int:
        with app.app_context():
            session = wsgi.db.session
            user = seats.add_person(
                session,
                username=username,
                first_name=first_name or username.capitalize(),
                surname=surname,
                email=email if email is not None else f"{username}@example.com",
                area=area,
                readonly=readonly,
                actor="test",
                now=utcnow(),
                path="test",
            )
            user.password_hash = generate_password_hash(PASSWORD, method=HASH_METHOD)
            user.is_sysadmin = sysadmin
            user.is_people_admin = people_admin
            if blocked:
                seats.block(session, user, reason=blocked, actor="test", now=utcnow(), path="test")
            session.commit()
            return user.id

    return make


@pytest.fixture
def accounts(make_person):
    """The demo's role accounts besides admin: sysadmin, peopleadmin and jennifer."""
    make_person("sysadmin", sysadmin=True)
    make_person("peopleadmin", people_admin=True)
    make_person("jennifer")
    return ["admin", "sysadmin", "peopleadmin", "jennifer"]


def usage(app) -> dict[str, int]:
    with app.app_context():
        return seats.usage(wsgi.db.session)


def person_state(app, username: str):
    """(active, area, pool, block_reason, seat_pool) of a person, read from the database."""
    with app.app_context():
        user = wsgi.db.session.scalar(sa.select(wsgi.User).where(wsgi.User.username == username))
        if user is None:
            return None
        profile = seats.profile_of(wsgi.db.session, user)
        return (user.active, profile.area, profile.pool, profile.block_reason, profile.seat_pool)


def count_users(app) -> int:
    with app.app_context():
        return wsgi.db.session.scalar(sa.select(sa.func.count()).select_from(wsgi.User))


BLOCKED = BLOCKED_BY_ADMIN


# PostgreSQL -----------------------------------------------------------------------------


def _psycopg_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@pytest.fixture(scope="session")
def postgres_server():
    """An engine on the server named by TEST_POSTGRES_URL.

    Under CI (CI=true) a missing or unreachable server fails the test instead of skipping.
    """
    url = os.environ.get("TEST_POSTGRES_URL")
    problem = None
    engine = None
    if not url:
        problem = "TEST_POSTGRES_URL is not set"
    else:
        engine = sa.create_engine(_psycopg_url(url), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("select 1"))
        except sa.exc.OperationalError as exc:
            problem = f"PostgreSQL at {url} cannot be reached: {exc.orig}"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the test PostgreSQL server, dropped afterwards."""
    name = f"licenses_test_{uuid.uuid4().hex[:12]}"
    with postgres_server.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    yield postgres_server.url.set(database=name).render_as_string(hide_password=False)
    with postgres_server.connect() as conn:
        conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))


def administrator_client(app):
    """A test client signed in as the administrator account (user id 1), without the form."""
    client = app.test_client()
    with client.session_transaction() as session:
        session["user_id"] = 1
    return client


def statements_run(app) -> list[str]:
    """The SQL statements the app's engines run from now on (the pages' read bind's too, on
    PostgreSQL), appended as they run."""
    statements = []
    with app.app_context():
        for engine in wsgi.db.engines.values():
            sa.event.listen(engine, "before_cursor_execute",
                            lambda *args: statements.append(args[2]))  # fmt: skip
    return statements


def demo_app_on(database_url: str, vendor_key, license_text: str, instance_path, **config):
    """The demo app on ``database_url``: ``init-db`` run and ``license_text`` installed."""
    app = wsgi.create_app(
        app_config(database_url, vendor_key, **config), instance_path=str(instance_path)
    )
    result = app.test_cli_runner().invoke(args=["init-db", "--password", PASSWORD])
    assert result.exit_code == 0, result.output
    with app.app_context():
        licensing.install(wsgi.db.session, license_text, actor="test", now=utcnow(), path="test")
        wsgi.db.session.commit()
    return app


@pytest.fixture
def postgres_app(postgres_url, vendor_key, make_license, tmp_path):
    """The demo app on a fresh PostgreSQL database: init-db run, a license installed."""
    app = demo_app_on(postgres_url, vendor_key, make_license(), tmp_path / "pg-instance")
    yield app
    with app.app_context():
        wsgi.dispose_engines()


# OpenLDAP slapd (directory sync, issue 6) -----------------------------------------------


@pytest.fixture(scope="session")
def slapd_server(tmp_path_factory):
    """One slapd on loopback for the session (Debian's slapd); tests use subtrees of it.

    Under CI (CI=true) a missing slapd fails the test instead of skipping.
    """
    from slapd import Slapd, slapd_binary

    if slapd_binary() is None:
        problem = "slapd is not installed (apt-get install slapd ldap-utils)"
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    server = Slapd(tmp_path_factory.mktemp("slapd")).start()
    yield server
    server.stop()


@pytest.fixture
def tree(app, slapd_server):
    """A fresh subtree of the session's slapd, set as the app's LICENSES_LDAP_* defaults."""
    from slapd import ADMIN_DN, ADMIN_PASSWORD, Directory

    tree = Directory(slapd_server)
    app.config.update(
        LICENSES_LDAP_URL=slapd_server.url,
        LICENSES_LDAP_BIND_DN=ADMIN_DN,
        LICENSES_LDAP_PASSWORD=ADMIN_PASSWORD,
        LICENSES_LDAP_BASE_DN=tree.base_dn,
        LICENSES_LDAP_FILTER="(objectClass=person)",
    )
    yield tree
    tree.conn.unbind()


# SMTP: a real mail server on loopback (aiosmtpd) --------------------------------------------


class SmtpSink:
    """aiosmtpd handler that keeps every message it accepts (or refuses with ``refuse``)."""

    def __init__(self):
        self.messages: list[tuple[str, list[str], object]] = []
        #: An SMTP reply such as "550 No such user" to refuse every recipient with.
        self.refuse: str | None = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.refuse:
            return self.refuse
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        from email import message_from_bytes, policy

        parsed = message_from_bytes(envelope.content, policy=policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 Message accepted for delivery"


class SmtpServer:
    """An aiosmtpd server on 127.0.0.1 that tests can stop and start again on the same port."""

    def __init__(self):
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.sink = SmtpSink()
        self.controller = None

    @property
    def messages(self):
        return self.sink.messages

    def start(self):
        from aiosmtpd.controller import Controller

        if self.controller is None:
            self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.port)
            self.controller.start()

    def stop(self):
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def config(self) -> dict:
        """Flask-Mail settings that send to this server even under TESTING."""
        return {
            "MAIL_SUPPRESS_SEND": False,
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": self.port,
            "MAIL_DEFAULT_SENDER": "intranet@example.com",
            "LICENSES_MAIL_TIMEOUT": 5,
        }


@pytest.fixture
def smtp_server():
    """A running SMTP server on loopback collecting messages (``smtp_server.messages``)."""
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mail_app(app, smtp_server):
    """The ``app`` fixture, sending its mail to ``smtp_server`` (Flask-Mail re-read)."""
    app.config.update(smtp_server.config())
    wsgi.mail.init_app(app)
    return app

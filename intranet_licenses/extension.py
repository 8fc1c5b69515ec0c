"""The Flask extension: configuration defaults, the host adapter and ``init_app``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, url_for

logger = logging.getLogger("intranet_licenses")

#: Every config key the extension reads, with its default. ``init_app`` sets each one with
#: ``app.config.setdefault``; ``config()`` refuses a key that is not listed here.
DEFAULTS: dict[str, Any] = {
    # Where the pages live.
    "LICENSES_URL_PREFIX": "/admin/licenses",
    # The site's own name, checked against a license's Host-Name (never the Host header).
    "LICENSES_SITE_NAME": "localhost",
    # Trusted vendor public keys: PEM texts or paths to PEM files (several, for rotation).
    "LICENSES_PUBLIC_KEYS": [],
    # Path to the vendor's private key; only the vendor (and the demo) issues licenses.
    "LICENSES_VENDOR_PRIVATE_KEY": None,
    # Where license requests are sent.
    "LICENSES_VENDOR_EMAIL": None,
    # Where "Fetch a new license" downloads the license from (None hides the button).
    "LICENSES_FETCH_URL": None,
    # The template the extension's pages extend; a host sets its own layout here.
    # It must define the blocks ``title`` and ``content``.
    "LICENSES_BASE_TEMPLATE": "licenses/layout.html",
    # Extranet areas (all draw on the one extranet pool).
    "LICENSES_EXTRANET_AREAS": [],
    # Username of the built-in administrator account, which never takes a seat.
    "LICENSES_ADMIN_USERNAME": "admin",
    # Block every request of a blocked or waiting person (the per-request check).
    "LICENSES_CHECK_EVERY_REQUEST": True,
    # Endpoints the per-request check leaves alone (login, logout, static files).
    "LICENSES_OPEN_ENDPOINTS": ["static", "licenses.static"],
    # A Flask-SQLAlchemy bind (a name in SQLALCHEMY_BINDS) on the same database, for the
    # pages' reads: on PostgreSQL their statements then stay prepared (see reads.py).
    "LICENSES_READ_BIND": None,
    # People per page on the People page.
    "LICENSES_PAGE_SIZE": 25,
    # Largest CSV upload in bytes.
    "LICENSES_MAX_UPLOAD_BYTES": 20 * 1024 * 1024,
    # Largest number of seats one license request may ask for.
    "LICENSES_MAX_REQUEST_SEATS": 100_000,
    # Directory sync defaults (flask licenses sync-directory and "Sync now").
    "LICENSES_LDAP_URL": None,
    "LICENSES_LDAP_BIND_DN": None,
    "LICENSES_LDAP_PASSWORD": None,
    "LICENSES_LDAP_BASE_DN": None,
    "LICENSES_LDAP_FILTER": "(objectClass=person)",
    # {area name: group DN or OU DN}; people in none of them go to the Primary Area.
    "LICENSES_LDAP_AREAS": {},
    # Seconds to wait for the directory server to connect or answer.
    "LICENSES_LDAP_TIMEOUT": 10,
    # CA certificates (a PEM file) that ldaps:// servers are verified against; None: the system's.
    "LICENSES_LDAP_CA_FILE": None,
    # Seconds to wait for the SMTP server before leaving a message in the outbox.
    "LICENSES_MAIL_TIMEOUT": 10,
    # The intranet's root URL as people reach it (https://intranet.example.com), for links
    # in emails; None means https://LICENSES_SITE_NAME. Never taken from a Host header.
    "LICENSES_EXTERNAL_URL": None,
    # The From address of the extension's emails; None means MAIL_DEFAULT_SENDER.
    "LICENSES_MAIL_SENDER": None,
}


class UserAdapter:
    """How the extension reads and writes the host's own users. A host subclasses it.

    Set ``model`` to the host's user model (a SQLAlchemy mapped class with an integer
    primary key) and name its columns; implement ``current_user`` and the two role checks.
    Everything else has a default that fits most hosts.
    """

    #: The host's user model.
    model: Any = None
    id_attr = "id"
    username_attr = "username"
    first_name_attr = "first_name"
    surname_attr = "surname"
    email_attr = "email"
    #: A boolean column: True when the person may use the intranet.
    active_attr = "active"
    #: Optional datetime columns, shown in People and the export when set.
    created_at_attr: str | None = None
    last_login_at_attr: str | None = None
    #: The endpoint anonymous users are sent to.
    login_endpoint = "login"
    #: Set when the host's user table needs an email address (NOT NULL) for every user.
    email_required = False
    #: Set when the host's user table allows one user per email address (UNIQUE).
    unique_email = False

    def __init__(self, db):
        #: The host's Flask-SQLAlchemy object (anything with ``.session`` and ``.engine``).
        self.db = db

    @property
    def session(self):
        return self.db.session

    def current_user(self):
        """The logged-in user object, or None when anonymous.

        It is called from the extension's own ``before_request`` check, which may run before
        the host's, so load the user lazily here (as Flask-Login's ``current_user`` does).
        """
        raise NotImplementedError

    def is_sysadmin(self, user) -> bool:
        """May open the License page, the summary and the request form."""
        raise NotImplementedError

    def is_people_admin(self, user) -> bool:
        """May open People: block, unblock, delete, add, import, sync, export."""
        raise NotImplementedError

    def login_url(self, next_url: str) -> str:
        return url_for(self.login_endpoint, next=next_url)

    def new_user(self, *, username: str, first_name: str, surname: str, email: str):
        """Build (do not add or commit) a new host user. Override to set host defaults."""
        return self.model(
            **{
                self.username_attr: username,
                self.first_name_attr: first_name,
                self.surname_attr: surname,
                self.email_attr: email,
                self.active_attr: False,
            }
        )

    def logout(self) -> None:
        """End the current user's session (called when a blocked person makes a request)."""

    def summary_lines(self) -> list[str]:
        """Lines the host adds to the System summary, e.g. its document counts."""
        return []

    # Small accessors used everywhere; hosts rarely override them.
    def get(self, user, name: str):
        attr = getattr(self, f"{name}_attr")
        return getattr(user, attr) if attr else None

    def set(self, user, name: str, value) -> None:
        setattr(user, getattr(self, f"{name}_attr"), value)

    def column(self, name: str):
        attr = getattr(self, f"{name}_attr")
        return getattr(self.model, attr) if attr else None


@dataclass
class _State:
    """What the extension keeps per application, in ``app.extensions['licenses']``."""

    adapter: UserAdapter
    #: Set once the extension's tables are found (``flask licenses upgrade`` has run).
    schema_ready: bool = False


class Licenses:
    """Mount license management on a Flask app: ``Licenses(app, adapter)`` or ``init_app``.

    Reads the ``LICENSES_*`` keys listed in :data:`DEFAULTS`.
    """

    def __init__(self, app: Flask | None = None, adapter: UserAdapter | None = None):
        if app is not None:
            self.init_app(app, adapter)

    def init_app(self, app: Flask, adapter: UserAdapter | None = None) -> None:
        if "licenses" in app.extensions:
            raise RuntimeError("intranet-licenses is already registered on this app.")
        if adapter is None or adapter.model is None:
            raise RuntimeError(
                "intranet-licenses needs a UserAdapter whose 'model' is the host's user model."
            )
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        app.extensions["licenses"] = _State(adapter=adapter)

        from . import cli, notifications, reads, seats, views

        seats.install_safety_net()
        notifications.init_app(app)
        app.teardown_appcontext(reads.close)
        app.register_blueprint(views.bp, url_prefix=app.config["LICENSES_URL_PREFIX"])
        app.cli.add_command(cli.licenses_cli)

    def upgrade(self) -> list[str]:
        """Create or upgrade the extension's tables, then give every user a profile.

        What ``flask licenses upgrade`` does, for a host's own setup command; run it in an
        app context, after the host's tables exist and before the host adds users. Commits.
        Returns sentences saying what the recount found.
        """
        from . import schema, seats
        from .models import utcnow

        ad = adapter()
        schema.upgrade(ad.db.engine)
        findings = seats.recount(ad.session, actor="setup", now=utcnow())
        ad.session.commit()
        return findings


def adapter() -> UserAdapter:
    """The current app's user adapter."""
    return current_app.extensions["licenses"].adapter


def config(key: str):
    """Read a ``LICENSES_`` config key, failing loudly on a mistyped name."""
    name = key if key.startswith("LICENSES_") else f"LICENSES_{key}"
    if name not in DEFAULTS:
        raise KeyError(f"{name} is not an intranet-licenses setting.")
    return current_app.config[name]

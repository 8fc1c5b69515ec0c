"""A small Flask-Security-Too intranet with intranet-licenses mounted on it.

    flask --app examples.fst_host.app init-host   # tables, the extension's tables, admin
    flask --app examples.fst_host.app seed-host   # a few people (needs a license)
    make run-fst                                  # all of it, with a demo license, and serve

Users live in Flask-Security-Too's own ``user`` table and are created with
``datastore.create_user``; the extension only adds its side tables.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import click
from flask import Flask, render_template
from flask.cli import with_appcontext
from flask_security import Security, SQLAlchemyUserDatastore, auth_required, hash_password
from flask_wtf.csrf import generate_csrf

from intranet_licenses import Licenses

from .licensing import FstUsers, LoginForm
from .models import Role, User, db

licenses = Licenses()
security = Security()
datastore = SQLAlchemyUserDatastore(db, User, Role)

#: Roles of this host; licensing.py maps them to the extension's two roles.
ROLES = {
    "admin": "Intranet administrator",
    "sysadmin": "System administration",
    "people-admin": "People administration",
}
DEFAULT_PASSWORD = "demo-password"


def create_app(test_config: dict | None = None, instance_path: str | None = None) -> Flask:
    app = Flask(
        __name__,
        instance_relative_config=True,
        instance_path=instance_path or str(Path(__file__).parent / "instance"),
    )
    instance = Path(app.instance_path)
    app.config.from_mapping(
        SECRET_KEY=os.environ.get("SECRET_KEY") or secrets.token_hex(32),
        SECURITY_PASSWORD_SALT="example-fst-host",  # an example's; set your own secret
        SECURITY_PASSWORD_HASH="pbkdf2_sha512",
        SECURITY_USERNAME_ENABLE=True,
        SECURITY_TRACKABLE=True,
        SECURITY_REGISTERABLE=True,  # self-registration at /register
        SECURITY_SEND_REGISTER_EMAIL=False,  # no mail server in the example
        SECURITY_EMAIL_VALIDATOR_ARGS={"check_deliverability": False},  # no DNS lookups
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{instance / 'fst_host.db'}",
        # The extension's pages render inside this host's layout.
        LICENSES_BASE_TEMPLATE="layout.html",
        LICENSES_SITE_NAME="fst.example.com",
    )
    if (instance / "vendor-public.pem").exists():  # made by `make run-fst`
        app.config["LICENSES_PUBLIC_KEYS"] = [str(instance / "vendor-public.pem")]
    app.config.from_prefixed_env()
    if test_config:
        app.config.update(test_config)

    db.init_app(app)
    security.init_app(app, datastore, login_form=LoginForm)
    licenses.init_app(app, FstUsers(db))
    app.jinja_env.globals["csrf_token"] = generate_csrf

    @app.get("/")
    @auth_required()
    def index():
        return render_template("index.html")

    app.cli.add_command(init_host_command)
    app.cli.add_command(seed_host_command)
    return app


@click.command("init-host")
@with_appcontext
@click.option("--password", default=DEFAULT_PASSWORD, show_default=True)
def init_host_command(password):
    """Create the host's tables, the extension's tables and the administrator account."""
    from flask import current_app

    Path(current_app.instance_path).mkdir(parents=True, exist_ok=True)
    db.create_all()
    licenses.upgrade()  # before any user is added: every user gets a profile from then on
    for name, description in ROLES.items():
        datastore.find_or_create_role(name, description=description)
    if datastore.find_user(username="admin") is None:
        datastore.create_user(
            username="admin",
            email="admin@example.com",
            first_name="Intranet",
            last_name="Administrator",
            password=hash_password(password),
            roles=["admin"],
        )
    db.session.commit()
    click.echo("The database is ready; the administrator account is 'admin'.")


SEED = [
    ("sysadmin", "Sam", "Sysadmin", ["sysadmin"]),
    ("peopleadmin", "Petra", "People", ["people-admin"]),
    ("jennifer", "Jennifer", "Lopez", []),
    ("tomas", "Tomás", "García", []),
    ("lea", "Léa", "Dubois", []),
]


@click.command("seed-host")
@with_appcontext
@click.option("--password", default=DEFAULT_PASSWORD, show_default=True)
def seed_host_command(password):
    """Add a few people through datastore.create_user (each takes a seat)."""
    for username, first, last, roles in SEED:
        if datastore.find_user(username=username) is None:
            datastore.create_user(
                username=username,
                email=f"{username}@example.com",
                first_name=first,
                last_name=last,
                password=hash_password(password),
                roles=roles,
            )
    db.session.commit()
    click.echo("Seeded: " + ", ".join(username for username, *_ in SEED) + ".")

"""A small Flask-AppBuilder intranet with intranet-licenses mounted on it.

    flask --app examples.fab_host.app init-host   # FAB's tables, the extension's, admin
    flask --app examples.fab_host.app seed-host   # a few people (needs a license)
    make run-fab                                  # all of it, with a demo license, and serve

Users live in FAB's own ``ab_user`` table and are created by its security manager's
``add_user``, its user admin views and its self-registration; the extension only adds its
side tables.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from flask_appbuilder import AppBuilder
from flask_appbuilder.const import AUTH_DB
from flask_appbuilder.models.sqla.base import SQLA

from intranet_licenses import Licenses

from .licensing import FabUsers, LicensedSecurityManager

db = SQLA()
licenses = Licenses()

#: This host's roles besides FAB's Admin and Public; licensing.py maps them.
EXTRA_ROLES = ("Sysadmin", "People Admin")
#: The extension's pages, as links in FAB's menu (role: which links it sees).
MENU = {"License": "/admin/licenses/", "Summary": "/admin/licenses/summary"}
MENU_PEOPLE = {"People": "/admin/licenses/people"}
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
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{instance / 'fab_host.db'}",
        APP_NAME="FAB Example Intranet",
        AUTH_TYPE=AUTH_DB,
        AUTH_ROLE_ADMIN="Admin",
        AUTH_ROLE_PUBLIC="Public",
        AUTH_USER_REGISTRATION=True,  # self-registration; the activation link goes by mail
        AUTH_USER_REGISTRATION_ROLE="Public",
        MAIL_DEFAULT_SENDER="intranet@example.com",
        # The extension's pages render inside FAB's layout (see the template for why a shim).
        LICENSES_BASE_TEMPLATE="licenses_fab_layout.html",
        LICENSES_SITE_NAME="fab.example.com",
    )
    if (instance / "vendor-public.pem").exists():  # made by `make run-fab`
        app.config["LICENSES_PUBLIC_KEYS"] = [str(instance / "vendor-public.pem")]
    app.config.from_prefixed_env()
    if test_config:
        app.config.update(test_config)
    instance.mkdir(parents=True, exist_ok=True)

    db.init_app(app)
    # One AppBuilder per app: it keeps its views on itself. It is app.appbuilder from here.
    appbuilder = AppBuilder(security_manager_class=LicensedSecurityManager)
    with app.app_context():
        appbuilder.init_app(app, db.session)  # creates FAB's tables and permissions
        for name, href in {**MENU, **MENU_PEOPLE}.items():
            appbuilder.add_link(name, href=href, category="Licenses")
    licenses.init_app(app, FabUsers(db))

    @app.context_processor
    def fab_layout_context():  # FAB's own views pass these to every template
        return {"appbuilder": appbuilder, "base_template": appbuilder.base_template}

    app.cli.add_command(init_host_command)
    app.cli.add_command(seed_host_command)
    return app


@click.command("init-host")
@with_appcontext
@click.option("--password", default=DEFAULT_PASSWORD, show_default=True)
def init_host_command(password):
    """Create the extension's tables, this host's roles and the administrator account."""
    sm = current_app.appbuilder.sm
    licenses.upgrade()  # before any user is added: every user gets a profile from then on
    for name in EXTRA_ROLES:
        role = sm.find_role(name) or sm.add_role(name)
        links = MENU if name == "Sysadmin" else MENU_PEOPLE
        for link in links:
            sm.add_permission_role(role, sm.find_permission_view_menu("menu_access", link))
    if sm.find_user(username="admin") is None:
        sm.add_user(
            "admin", "Intranet", "Administrator", "admin@example.com",
            sm.find_role("Admin"), password,
        )  # fmt: skip
    click.echo("The database is ready; the administrator account is 'admin'.")


SEED = [
    ("sysadmin", "Sam", "Sysadmin", "Sysadmin"),
    ("peopleadmin", "Petra", "People", "People Admin"),
    ("jennifer", "Jennifer", "Lopez", "Public"),
    ("tomas", "Tomás", "García", "Public"),
    ("lea", "Léa", "Dubois", "Public"),
]


@click.command("seed-host")
@with_appcontext
@click.option("--password", default=DEFAULT_PASSWORD, show_default=True)
def seed_host_command(password):
    """Add a few people through FAB's add_user (each takes a seat)."""
    sm = current_app.appbuilder.sm
    for username, first, last, role in SEED:
        if sm.find_user(username=username) is None:
            user = sm.add_user(
                username, first, last, f"{username}@example.com", sm.find_role(role), password
            )
            if user is False:
                raise click.ClickException(f"{username} was not added: see the log above.")
    click.echo("Seeded: " + ", ".join(username for username, *_ in SEED) + ".")

"""A second, minimal host: another user model, another layout, roles from a callback.

It mounts intranet-licenses with one ``init_app`` call and shares nothing with the demo.
Run it alone: ``MINIMAL_HOST_DB=sqlite:////tmp/m.db flask --app tests/minimal_host/app.py run``
"""

from __future__ import annotations

import os

from flask import Flask, g, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Boolean, Integer, String
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from intranet_licenses import Licenses, UserAdapter

db = SQLAlchemy()


class LowerCaseEmail(TypeDecorator):
    """An email column of a type of the host's own (as sqlalchemy_utils' EmailType is)."""

    impl = String(120)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return value.lower() if value else value


class Member(db.Model):
    __tablename__ = "members"

    member_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    login: Mapped[str] = mapped_column(String(80), unique=True)
    given_name: Mapped[str] = mapped_column(String(80))
    family_name: Mapped[str] = mapped_column(String(80))
    mail: Mapped[str] = mapped_column(LowerCaseEmail, default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    roles: Mapped[str] = mapped_column(String(200), default="")


class Members(UserAdapter):
    model = Member
    id_attr = "member_no"
    username_attr = "login"
    first_name_attr = "given_name"
    surname_attr = "family_name"
    email_attr = "mail"
    active_attr = "enabled"
    login_endpoint = "sign_in"

    def current_user(self):
        # Called from the extension's own before_request too: load lazily, like Flask-Login.
        if "member" not in g:
            login = request.headers.get("X-Member")
            g.member = db.session.query(Member).filter_by(login=login).first() if login else None
        return g.member

    def is_sysadmin(self, user):
        return "it" in user.roles.split()

    def is_people_admin(self, user):
        return "hr" in user.roles.split()


def create_app(config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="minimal",
        SQLALCHEMY_DATABASE_URI=os.environ.get("MINIMAL_HOST_DB", "sqlite://"),
        LICENSES_BASE_TEMPLATE="member_layout.html",
        LICENSES_ADMIN_USERNAME="root",
        LICENSES_URL_PREFIX="/licensing",
    )
    app.config.update(config or {})
    db.init_app(app)
    Licenses().init_app(app, Members(db))

    @app.get("/sign-in")
    def sign_in():
        return "Sign in here", 401

    return app

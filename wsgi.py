"""The demo intranet: a small Flask app with its own users that mounts intranet-licenses.

Run it with ``make run``; see README.md. Nothing in ``intranet_licenses`` imports this file.
"""

from __future__ import annotations

import functools
import os
import secrets
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import urlsplit

import click
from flask import Flask, abort, flash, g, redirect, render_template, request, session, url_for
from flask.cli import with_appcontext
from flask_mail import Mail
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import FlaskForm
from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, event, func, select
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.security import check_password_hash, generate_password_hash
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired

from intranet_licenses import Licenses, UserAdapter, login_refusal, seats, sso
from intranet_licenses.cli import cli_actor
from intranet_licenses.license_file import generate_key_pair, load_private_key, sign_text
from intranet_licenses.licensing import install
from intranet_licenses.models import AWAITING_LICENSE
from intranet_licenses.schema import upgrade

db = SQLAlchemy()
mail = Mail()
licenses = Licenses()

PRIVATE_KEY = "vendor-private.pem"
PUBLIC_KEY = "vendor-public.pem"
SECRET_KEY_FILE = "secret_key"
DEFAULT_PASSWORD = "demo-password"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class User(db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(255), unique=True)
    first_name: Mapped[str] = mapped_column(String(255))
    surname: Mapped[str] = mapped_column(String(255))
    email: Mapped[str] = mapped_column(String(255), default="")
    password_hash: Mapped[str | None] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    is_sysadmin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_people_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime)


class Document(db.Model):
    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(255))


class DocumentVersion(db.Model):
    __tablename__ = "document_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id"))
    number: Mapped[int] = mapped_column(Integer)


class DemoUsers(UserAdapter):
    """The demo's side of the host contract."""

    model = User
    created_at_attr = "created_at"
    last_login_at_attr = "last_login_at"

    def current_user(self):
        # The extension asks from its own before_request: load lazily, like Flask-Login.
        if "user" not in g:
            _load_user()
        return g.user

    def is_sysadmin(self, user) -> bool:
        return user.is_sysadmin

    def is_people_admin(self, user) -> bool:
        return user.is_people_admin

    def logout(self) -> None:
        session.clear()

    def summary_lines(self) -> list[str]:
        documents, versions = db.session.execute(_document_counts()).one()
        return [f"Number of Documents {documents} ({versions} including versions)"]


@functools.cache
def _document_counts():
    """Both counts in one statement, built once (the summary page runs it on every view)."""
    return select(
        select(func.count()).select_from(Document).scalar_subquery(),
        select(func.count()).select_from(DocumentVersion).scalar_subquery(),
    )


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired()])


class SimulatedSSOForm(FlaskForm):
    """The claims a (simulated) identity provider would vouch for."""

    sso_username = StringField("SSO username", validators=[DataRequired()])
    sso_first_name = StringField("SSO first name")
    sso_surname = StringField("SSO surname")
    sso_email = StringField("SSO email")


def create_app(test_config: dict | None = None, instance_path: str | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True, instance_path=instance_path)
    instance = Path(app.instance_path)
    app.config.from_mapping(
        SECRET_KEY=_read(instance / SECRET_KEY_FILE) or secrets.token_hex(32),
        SQLALCHEMY_DATABASE_URI=os.environ.get("DATABASE_URL")
        or f"sqlite:///{instance / 'intranet.db'}",
        LICENSES_EXTRANET_AREAS=["partners", "suppliers"],
        LICENSES_SITE_NAME="intranet.example.com",
        LICENSES_BASE_TEMPLATE="base.html",
        LICENSES_VENDOR_EMAIL="licenses@vendor.example.com",
        DEMO_PASSWORD_METHOD="scrypt",
        MAIL_DEFAULT_SENDER="intranet@example.com",
    )
    if (instance / PUBLIC_KEY).exists():
        app.config["LICENSES_PUBLIC_KEYS"] = [str(instance / PUBLIC_KEY)]
        app.config["LICENSES_VENDOR_PRIVATE_KEY"] = str(instance / PRIVATE_KEY)
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env()  # FLASK_LICENSES_SITE_NAME, FLASK_MAIL_SERVER, ...
    if test_config:
        app.config.update(test_config)
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql://"):
        app.config["SQLALCHEMY_DATABASE_URI"] = app.config["SQLALCHEMY_DATABASE_URI"].replace(
            "postgresql://", "postgresql+psycopg://", 1
        )
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql+psycopg://"):
        # The extension's pages read on a pool of their own, where psycopg keeps their
        # statements prepared and PostgreSQL plans each once (intranet_licenses/reads.py).
        # Added to the binds the configuration may name already, not instead of them.
        app.config.setdefault("SQLALCHEMY_BINDS", {}).setdefault("licenses_reads", {
            "url": app.config["SQLALCHEMY_DATABASE_URI"],
            "connect_args": {"options": "-c plan_cache_mode=force_generic_plan"},
        })  # fmt: skip
        app.config.setdefault("LICENSES_READ_BIND", "licenses_reads")
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"connect_args": {"timeout": 30}})

    db.init_app(app)
    mail.init_app(app)
    # Load the user first: the extension's per-request check (registered by init_app) reads it.
    app.before_request(_load_user)
    licenses.init_app(app, DemoUsers(db))
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", _sqlite_pragmas)

    _routes(app)
    app.cli.add_command(init_db_command)
    app.cli.add_command(seed_demo_command)
    return app


def dispose_engines() -> None:
    """Close the pooled connections of every engine of the app (the pages' read bind's too),
    for tests and scripts that are done with an app; in an app context."""
    for engine in db.engines.values():
        engine.dispose()


def _local_target(target: str) -> str:
    """``next`` only when it is a path on this site (no scheme, no host, no ``//``, nothing
    that does not print: a line break in the Location header is a 500)."""
    parts = urlsplit(target)
    local = target.startswith("/") and not target.startswith("//") and "\\" not in target
    local = local and target.isprintable()
    return target if local and not parts.scheme and not parts.netloc else url_for("index")


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


def _sqlite_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _load_user():
    user_id = session.get("user_id")
    g.user = db.session.get(User, user_id) if user_id is not None else None


def _routes(app: Flask) -> None:
    @app.get("/")
    def index():
        if g.user is None:
            return redirect(url_for("login"))
        documents = db.session.scalars(select(Document).order_by(Document.id).limit(10)).all()
        return render_template("index.html", documents=documents)

    @app.route("/login", methods=["GET", "POST"])
    def login():
        form = LoginForm()
        if form.validate_on_submit():
            typed = form.username.data
            user = (
                db.session.scalar(select(User).where(func.lower(User.username) == typed.lower()))
                if typed.isprintable()
                else None
            )
            if user is None or not check_password_hash(
                user.password_hash or "", form.password.data
            ):
                flash("Wrong username or password.", "error")
            else:
                refusal = login_refusal(user)
                if refusal is not None:
                    return _login_page(form, refusal=refusal), 403
                session.clear()
                session["user_id"] = user.id
                user.last_login_at = utcnow()
                db.session.commit()
                return redirect(_local_target(request.args.get("next", "")))
        return _login_page(form)

    def _login_page(form, sso_form=None, refusal=None):
        return render_template(
            "login.html",
            form=form,
            sso_form=sso_form or SimulatedSSOForm(formdata=None),
            refusal=refusal,
        )

    @app.post("/login/sso")
    def login_sso():
        """A simulated single sign-on: the form stands in for an identity provider's claims."""
        sso_form = SimulatedSSOForm()
        form = LoginForm(formdata=None)
        if not sso_form.validate_on_submit():
            flash("Simulated SSO: enter at least a username.", "error")
            return _login_page(form, sso_form), 400
        claims = {
            "preferred_username": sso_form.sso_username.data,
            "given_name": sso_form.sso_first_name.data,
            "family_name": sso_form.sso_surname.data,
            "email": sso_form.sso_email.data,
        }
        try:
            user = sso.sign_in(db.session, claims, now=utcnow())
        except sso.SignInRefused as refusal:
            db.session.commit()  # only the audit record of the refusal; no profile is left
            return _login_page(form, sso_form, refusal=refusal), 403
        if user.password_hash:
            # The simulated provider vouches for anyone: it must not open password accounts
            # (admin, sysadmin, ...), only people who come from the identity provider.
            db.session.rollback()
            flash(
                f"{user.username} signs in with a password above; the simulated sign-in is "
                "only for people who come from the identity provider.",
                "error",
            )
            return _login_page(form, sso_form), 403
        session.clear()
        session["user_id"] = user.id
        user.last_login_at = utcnow()
        db.session.commit()
        return redirect(url_for("index"))

    @app.post("/logout")
    def logout():
        session.clear()
        return redirect(url_for("login"))

    @app.get("/documents/<int(max=2147483647):document_id>")  # ids past the INTEGER range: 404
    def document(document_id: int):
        if g.user is None:
            return redirect(url_for("login", next=request.full_path))
        doc = db.session.get(Document, document_id) or abort(404)
        return render_template("document.html", document=doc)

    @app.get("/hello")
    def hello():
        """A trivial page (login, same layout, no queries): the pages benchmark's baseline."""
        if g.user is None:
            return redirect(url_for("login", next=request.full_path))
        return render_template("hello.html")

    @app.errorhandler(403)
    def forbidden(_error):
        return render_template("403.html"), 403


# Demo data ------------------------------------------------------------------------------


def _new_user(username, first, surname, *, password, method, **flags) -> User:
    return User(
        username=username,
        first_name=first,
        surname=surname,
        email=f"{username}@example.com",
        password_hash=generate_password_hash(password, method=method),
        active=True,
        **flags,
    )


@click.command("init-db")
@with_appcontext
@click.option("--password", default=DEFAULT_PASSWORD, show_default=True)
def init_db_command(password):
    """Create the schema (host tables and the extension's) and the administrator account."""
    from flask import current_app

    instance = Path(current_app.instance_path)
    instance.mkdir(parents=True, exist_ok=True)
    if not (instance / SECRET_KEY_FILE).exists():
        (instance / SECRET_KEY_FILE).write_text(secrets.token_hex(32))
    # The default bind's tables only: the tests make apps with and without the read bind
    # from this one ``db``, and create_all() of every bind refuses one another app declared.
    db.create_all(bind_key=None)
    upgrade(db.engine)
    if db.session.scalar(select(User).where(User.username == "admin")) is None:
        db.session.add(
            _new_user(
                "admin",
                "Intranet",
                "Administrator",
                password=password,
                method=current_app.config["DEMO_PASSWORD_METHOD"],
                is_sysadmin=True,
                is_people_admin=True,
            )
        )
        db.session.commit()
    seats.recount(db.session, actor=cli_actor(), now=utcnow())
    db.session.commit()
    click.echo("The database is ready; the administrator account is 'admin'.")


FIRST_NAMES = [
    "Anna",
    "Björn",
    "Chloé",
    "Dmitri",
    "Élodie",
    "Farah",
    "Gustav",
    "Hana",
    "Ignacio",
    "Jürgen",
    "Kiri",
    "Léa",
    "Mateo",
    "Nadia",
    "Oskar",
    "Priya",
    "Quentin",
    "Rosa",
    "Søren",
    "Tomás",
    "Ute",
    "Valentina",
    "Wen",
    "Ximena",
    "Yusuf",
    "Zoë",
]
SURNAMES = [
    "Andersen",
    "O'Brien",
    "Dubois",
    "Nguyen",
    "Müller",
    "García",
    "Kowalski",
    "Rossi",
    "Yamamoto",
    "Novák",
    "Haddad",
    "Silva",
    "Ivanova",
    "Okafor",
    "Larsen",
    "Costa",
]


def _demo_license_fields() -> dict[str, str]:
    return {
        "Registered-To": "Example Corporation (demo)",
        "Host-Id": "DEMO-0001",
        "Host-Name": "*",
        "Issued": date.today().isoformat(),
        "Expires": "Never",
        "MAX_USERS": "70",
        "MAX_EXTRANET_USERS": "20",
        "MAX_READONLY_USERS": "15",
        "MAX_PUBLISH_LOCATIONS": "5",
        "MAX_EFORMS_PROJECTS": "10",
        "CRM_ALLOWED": "Yes",
    }


@click.command("seed-demo")
@with_appcontext
@click.option("--password", default=DEFAULT_PASSWORD, show_default=True)
@click.option("--if-empty", is_flag=True, help="Do nothing when the demo people exist.")
def seed_demo_command(password, if_empty):
    """Vendor keys, a demo license and the demo people (every account gets PASSWORD)."""
    from flask import current_app

    seeded = db.session.scalar(select(User).where(User.username == "jennifer")) is not None
    if if_empty and seeded:
        click.echo("The demo is seeded already.")
        return

    config = current_app.config
    method = config["DEMO_PASSWORD_METHOD"]
    instance = Path(current_app.instance_path)
    private_path, public_path = instance / PRIVATE_KEY, instance / PUBLIC_KEY
    if not private_path.exists():
        private_pem, public_pem = generate_key_pair()
        private_path.write_bytes(private_pem)
        private_path.chmod(0o600)
        public_path.write_bytes(public_pem)
        click.echo(f"Generated a demo vendor key pair in {instance}.")
    config["LICENSES_PUBLIC_KEYS"] = [str(public_path)]
    config["LICENSES_VENDOR_PRIVATE_KEY"] = str(private_path)
    now = utcnow()
    install(
        db.session,
        sign_text(_demo_license_fields(), load_private_key(private_path)),
        actor=cli_actor(),
        now=now,
        path="cli",
    )
    db.session.commit()

    # One hash for every demo account: they share the password anyway, and scrypt is slow.
    password_hash = generate_password_hash(password, method=method)
    existing = {u.username: u for u in db.session.scalars(select(User))}
    for user in existing.values():
        user.password_hash = password_hash
    db.session.commit()
    if "jennifer" in existing:
        click.echo("The demo people exist already; their passwords were reset.")
        return

    def add(username, first, surname, area="primary", readonly=False, **flags):
        seats.add_person(
            db.session,
            username=username,
            first_name=first,
            surname=surname,
            email=f"{username}@example.com",
            area=area,
            readonly=readonly,
            actor=cli_actor(),
            now=now,
            path="cli",
        )
        user = db.session.scalar(select(User).where(User.username == username))
        user.password_hash = password_hash
        for name, value in flags.items():
            setattr(user, name, value)
        return user

    add("sysadmin", "Sam", "Sysadmin", is_sysadmin=True)
    add("peopleadmin", "Petra", "People", is_people_admin=True)
    add("jennifer", "Jennifer", "Lopez")
    people = [
        (
            f"{FIRST_NAMES[i % 26].lower()}.{SURNAMES[i % 16].lower()}{i}",
            FIRST_NAMES[i % 26],
            SURNAMES[i % 16],
        )
        for i in range(60)
    ]
    usernames = [_ascii(u) for u, _, _ in people]
    for (_username, first, surname), name in zip(people[:50], usernames[:50], strict=True):
        add(name, first, surname)
    for username, first, surname, area in [
        (usernames[50], people[50][1], people[50][2], "partners"),
        (usernames[51], people[51][1], people[51][2], "partners"),
        (usernames[52], people[52][1], people[52][2], "partners"),
        (usernames[53], people[53][1], people[53][2], "suppliers"),
    ]:
        add(username, first, surname, area=area)
    add(usernames[54], people[54][1], people[54][2], readonly=True)
    for index in (55, 56, 57):
        user = add(usernames[index], people[index][1], people[index][2])
        seats.block(db.session, user, actor=cli_actor(), now=now, path="cli")
    for index in (58, 59):
        user = add(usernames[index], people[index][1], people[index][2], area="partners")
        seats.block(
            db.session, user, reason=AWAITING_LICENSE, actor=cli_actor(), now=now, path="cli"
        )
    for number in range(1, 94):
        document = Document(title=f"Document {number}")
        db.session.add(document)
        db.session.flush()
        db.session.add(DocumentVersion(document_id=document.id, number=1))
        if number <= 5:
            db.session.add(DocumentVersion(document_id=document.id, number=2))
    db.session.commit()
    click.echo("Seeded the demo people, documents and license.")


def _ascii(name: str) -> str:
    import unicodedata

    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().replace("'", "")

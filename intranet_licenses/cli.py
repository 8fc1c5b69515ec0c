"""The ``flask licenses`` commands, for operators, cron and the vendor."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

import click
from flask.cli import AppGroup

from . import licensing, schema, seats
from .extension import adapter, config
from .license_file import LicenseFileError, generate_key_pair, load_private_key, sign_text
from .models import PRIMARY_AREA, utcnow

licenses_cli = AppGroup("licenses", help="License (seat) management.")
people_cli = AppGroup("people", help="Add, block, unblock, delete and move people.")
licenses_cli.add_command(people_cli)


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name in some containers
        return "cli"


def _session():
    return adapter().session


def _refuse(message: str):
    """Print one sentence to stderr and exit 1."""
    _session().rollback()
    raise click.ClickException(message)


# Schema ---------------------------------------------------------------------------------


@licenses_cli.command("upgrade")
def upgrade_command():
    """Create or upgrade the extension's tables, then count seats."""
    schema.upgrade(adapter().db.engine)
    session = _session()
    findings = seats.recount(session, actor=cli_actor(), now=utcnow())
    session.commit()
    click.echo(
        f"The licenses schema is at revision {schema.current_revision(adapter().db.engine)}."
    )
    for line in findings:
        click.echo(line)


@licenses_cli.command("recount")
def recount_command():
    """Check the seat counters against the profiles and repair any drift."""
    session = _session()
    findings = seats.recount(session, actor=cli_actor(), now=utcnow())
    session.commit()
    if findings:
        for line in findings:
            click.echo(line)
    else:
        click.echo("The seat counters match the profiles; nothing was repaired.")


# The license ----------------------------------------------------------------------------


@licenses_cli.command("keygen")
@click.option("--private-key", "private_path", required=True, type=click.Path(dir_okay=False))
@click.option("--public-key", "public_path", required=True, type=click.Path(dir_okay=False))
def keygen_command(private_path, public_path):
    """Make a vendor key pair (Ed25519) for signing licenses."""
    for path in (private_path, public_path):
        if Path(path).exists():
            raise click.ClickException(f"{path} already exists; choose another file name.")
    private_pem, public_pem = generate_key_pair()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem)
    Path(public_path).write_bytes(public_pem)
    click.echo(f"Wrote the private key to {private_path} and the public key to {public_path}.")


@licenses_cli.command("issue")
@click.option("--private-key", "private_path", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", "out_path", required=True, help="File to write, or - for stdout.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def issue_command(private_path, out_path, overrides):
    """Sign a license: the installed license's fields, changed by each --set."""
    key_path = private_path or config("VENDOR_PRIVATE_KEY")
    if not key_path:
        raise click.ClickException(
            "No private key: pass --private-key or set LICENSES_VENDOR_PRIVATE_KEY."
        )
    try:
        key = load_private_key(key_path)
    except LicenseFileError as exc:
        raise click.ClickException(str(exc)) from None
    status = licensing.current(_session(), utcnow().date()).status
    fields = dict(status.license.fields) if status.license else {}
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or " " in name.strip():
            raise click.ClickException(f"--set {item!r} is not KEY=VALUE.")
        fields[name.strip()] = value.strip()
    text = sign_text(fields, key)
    if out_path == "-":
        click.echo(text, nl=False)
    else:
        Path(out_path).write_text(text, encoding="utf-8")
        click.echo(f"Wrote a signed license to {out_path}.")


@licenses_cli.command("install")
@click.argument("file", type=click.File("rb"))
def install_command(file):
    """Install a license file (the one in force stays if it is not valid)."""
    raw = file.read(1024 * 1024)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        _refuse(f"{file.name} is not a license: it is not UTF-8 text.")
    session = _session()
    try:
        licensing.install(session, text, actor=cli_actor(), now=utcnow(), path="cli")
    except licensing.LicenseRefused as refusal:
        session.commit()  # keeps the audit record of the refusal
        raise click.ClickException(str(refusal)) from None
    session.commit()
    click.echo(licensing.validity_sentence(licensing.current(session, utcnow().date())))


@licenses_cli.command("status")
def status_command():
    """Print the validity sentence and the users line; exit 0 only when valid."""
    session = _session()
    now = utcnow()
    current = licensing.current(session, now.date())
    click.echo(licensing.validity_sentence(current))
    click.echo(seats.summary_sentence(seats.figures(session, now)))
    sys.exit(0 if current.status.valid else 1)


# People ---------------------------------------------------------------------------------


def _person_command(username: str, service, done: str, **kwargs):
    session = _session()
    try:
        user = seats.find_person(session, username)
        service(session, user, actor=cli_actor(), now=utcnow(), path="cli", **kwargs)
    except seats.SeatError as refusal:
        session.commit()  # keeps the audit record of a refusal; nothing else changed
        raise click.ClickException(str(refusal)) from None
    session.commit()
    click.echo(done)


@people_cli.command("add")
@click.argument("username")
@click.option("--first-name", required=True)
@click.option("--surname", required=True)
@click.option("--email", required=True)
@click.option("--area", default=PRIMARY_AREA, show_default=True)
@click.option("--readonly", is_flag=True)
def people_add_command(username, first_name, surname, email, area, readonly):
    """Add one active person (refused when their pool is full)."""
    session = _session()
    try:
        seats.add_person(
            session,
            username=username,
            first_name=first_name,
            surname=surname,
            email=email,
            area=area,
            readonly=readonly,
            source="single",
            path="cli",
            actor=cli_actor(),
            now=utcnow(),
        )
    except seats.SeatError as refusal:
        session.commit()
        raise click.ClickException(str(refusal)) from None
    session.commit()
    click.echo(f"{username} was added and is active.")


@people_cli.command("block")
@click.argument("username")
def people_block_command(username):
    """Block a person; their seat is freed at once."""
    _person_command(username, seats.block, f"{username} is blocked; their seat is free.")


@people_cli.command("unblock")
@click.argument("username")
def people_unblock_command(username):
    """Make a blocked person active again (refused when their pool is full)."""
    _person_command(username, seats.unblock, f"{username} is active again.")


@people_cli.command("delete")
@click.argument("username")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def people_delete_command(username, yes):
    """Delete a person for good; their seat is freed."""
    if not yes and sys.stdin.isatty():
        click.confirm(f"Delete {username} permanently?", abort=True)
    _person_command(username, seats.delete, f"{username} was deleted for good.")


@people_cli.command("move")
@click.argument("username")
@click.option("--area", required=True)
@click.option("--readonly/--no-readonly", default=None)
def people_move_command(username, area, readonly):
    """Move a person to another area and/or into or out of the read-only pool."""
    session = _session()
    if readonly is None:
        try:
            readonly = seats.profile_of(session, seats.find_person(session, username)).readonly
        except seats.SeatError as refusal:
            raise click.ClickException(str(refusal)) from None
    _person_command(username, seats.move, f"{username} was moved.", area=area, readonly=readonly)


@people_cli.command("activate-waiting")
def people_activate_waiting_command():
    """Activate people awaiting a license, oldest first, while seats are free."""
    session = _session()
    result = seats.activate_waiting(session, actor=cli_actor(), now=utcnow(), path="cli")
    session.commit()
    click.echo(
        f"Activated {len(result.activated)}; {result.still_waiting} still waiting for a license."
    )


# People export (issue 7) -----------------------------------------------------------------


@licenses_cli.command("export")
@click.option(
    "--columns",
    default="",
    metavar="NAMES",
    help="Optional columns, comma-separated: account_state,email,area,pool,block_reason,"
    "created,last_login (or all). They always appear in that order.",
)
@click.option("--state", default="all", show_default=True, help="active, blocked or all.")
@click.option("--area", default=None, help="Only this area (primary or an extranet area).")
@click.option("--bom", is_flag=True, help="Start with a UTF-8 byte-order mark (for Excel).")
@click.option("--out", "out_path", default="-", show_default=True, help="File to write, or -.")
def export_command(columns, state, area, bom, out_path):
    """Export People to CSV, streamed (the same bytes as the People export page)."""
    from . import export

    try:
        opts = export.options(columns=columns, state=state, area=area, bom=bom)
    except export.ExportError as exc:
        raise click.ClickException(str(exc)) from None
    if out_path == "-":
        out = sys.stdout.buffer
        for chunk in export.stream(opts):
            out.write(chunk)
        out.flush()
        return
    target = Path(out_path)
    if target.is_dir():
        raise click.ClickException(f"{out_path} is a folder; give a file name for --out.")
    if not target.parent.is_dir():
        raise click.ClickException(
            f"The folder {target.parent} does not exist; create it or choose another --out."
        )
    total = export.count_rows(_session(), opts)
    _session().rollback()  # end the read; the export reads on its own connection
    # Written beside the target and renamed at the end: a run that stops half-way never
    # leaves a file under the target's name that looks complete.
    partial = target.with_name(f".{target.name}.part")
    written = 0
    try:
        with (
            partial.open("wb") as out,
            click.progressbar(length=total, label="Exporting people", file=sys.stderr) as bar,
        ):

            def progress(rows):
                nonlocal written
                written += rows
                bar.update(rows)

            for chunk in export.stream(opts, progress=progress):
                out.write(chunk)
        partial.replace(target)
    except OSError as exc:
        _remove_partial(partial)
        raise click.ClickException(f"Could not write {out_path}: {exc.strerror}.") from None
    except BaseException:
        _remove_partial(partial)
        raise
    click.echo(f"Wrote {written} people to {out_path}.", err=True)


def _remove_partial(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass

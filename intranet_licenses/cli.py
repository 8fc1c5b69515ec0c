"""The ``flask licenses`` commands, for operators, cron and the vendor."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

import click
from flask.cli import AppGroup

from . import csv_import, license_requests, licensing, notifications, outbox, schema, seats
from .extension import adapter, config
from .license_file import (
    LIMIT_KEYS,
    LicenseFileError,
    generate_key_pair,
    load_private_key,
    sign_text,
)
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
        name = name.strip()
        if name.upper().startswith("MAX_") and name not in LIMIT_KEYS:
            # A license may carry any registration field, but a mistyped limit would be
            # signed silently and read as 0 seats by every site that installs it.
            raise click.ClickException(
                f"--set {name}: a license has no such limit. The limits are "
                f"{', '.join(LIMIT_KEYS)}."
            )
        fields[name] = value.strip()
    try:
        text = sign_text(fields, key)
    except LicenseFileError as exc:  # a --set value the format does not allow
        raise click.ClickException(f"{exc} Nothing was written.") from None
    if out_path == "-":
        click.echo(text, nl=False)
    else:
        try:
            Path(out_path).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(
                f"Cannot write {out_path}: {exc.strerror or exc}. Choose a file in a folder "
                "that exists and that you may write to."
            ) from None
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
    if not text.strip():
        _refuse(
            f"{file.name} is empty: it holds no license. The license in force was not changed."
        )
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
    reading = seats.license_and_figures(session, now)
    if notifications.notice_license_state(
        session, now, (reading.current, reading.license_state_seen)
    ):
        session.commit()
    click.echo(licensing.validity_sentence(reading.current))
    click.echo(seats.summary_sentence(reading.figures))
    sys.exit(0 if reading.current.status.valid else 1)


@licenses_cli.command("show")
def show_command():
    """Print the license text in force, exactly as installed (to keep or send it)."""
    text = licensing.installed_text(_session())
    if text is None:
        _refuse("No license is installed.")
    click.echo(text, nl=not text.endswith("\n"))


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


# Directory sync (issue 6) ---------------------------------------------------------------


@licenses_cli.command("sync-directory")
@click.option("--url", help="ldap:// or ldaps:// URL (default LICENSES_LDAP_URL).")
@click.option("--bind-dn", help="DN to sign in as (default LICENSES_LDAP_BIND_DN).")
@click.option(
    "--password-file",
    type=click.File("r"),
    help="File holding the bind password (default LICENSES_LDAP_PASSWORD).",
)
@click.option("--base-dn", help="Where people are read from (default LICENSES_LDAP_BASE_DN).")
@click.option("--filter", "search_filter", help="LDAP filter (default LICENSES_LDAP_FILTER).")
def sync_directory_command(url, bind_dn, password_file, base_dn, search_filter):
    """Read people from LDAP / Active Directory and apply them (rule 3 at the limit)."""
    from . import directory

    password = password_file.read().rstrip("\r\n") if password_file else None
    session = _session()
    try:
        settings = directory.settings_from_config(
            url=url,
            bind_dn=bind_dn,
            password=password,
            base_dn=base_dn,
            search_filter=search_filter,
        )
        report = directory.sync(
            session,
            settings,
            actor=cli_actor(),
            now=utcnow(),
            path="directory",
            progress=_sync_progress,
        )
    except directory.DirectoryError as exc:
        session.commit()  # only the audit record of the failed attempt; nothing else changed
        raise click.ClickException(str(exc)) from None
    session.commit()
    for line in report.lines():
        click.echo(line)


def _sync_progress(stage: str, done: int, total: int | None) -> None:
    """A line on stderr every directory.PROGRESS_EVERY people (none for small directories)."""
    if stage == "read":
        what = f"read {done:,} entries"
    elif stage == "apply":
        what = f"compared {done:,} of {total:,} listed people with their profiles"
    else:
        what = f"created {done:,} of {total:,} new people"
    click.echo(f"Directory sync: {what}...", err=True)


# Notifications: the Responsible person and the mail outbox (issue 8) ---------------------

mail_cli = AppGroup("mail", help="The outbox of the extension's emails.")
licenses_cli.add_command(mail_cli)


@licenses_cli.command("responsible-person")
@click.argument("email", required=False)
@click.option("--clear", is_flag=True, help="Remove the address: nobody will be told.")
def responsible_person_command(email, clear):
    """Print the Responsible person, or set it to EMAIL (one address)."""
    session = _session()
    if email is None and not clear:
        current = notifications.responsible_person(session)
        if current:
            click.echo(current)
        else:
            click.echo(
                "No Responsible person is set: nobody is told when a license limit is exceeded."
            )
        return
    if email is not None and clear:
        raise click.ClickException("Give an address or --clear, not both.")
    try:
        old, new = notifications.set_responsible_person(
            session, None if clear else email, actor=cli_actor(), now=utcnow(), path="cli"
        )
    except notifications.AddressError as problem:
        _refuse(f"The Responsible person was not changed. {problem}")
    session.commit()
    if old == new:
        click.echo(f"The Responsible person stays {new or 'unset'}.")
    elif new is None:
        click.echo(f"The Responsible person was removed (was {old}); nobody will be told.")
    else:
        click.echo(f"The Responsible person is now {new} (was {old or 'nobody'}).")


@mail_cli.command("send-pending")
@click.option(
    "--retry-now", is_flag=True, help="Ignore the back-off: try every unsent message now."
)
def mail_send_pending_command(retry_now):
    """Send the outbox's due messages (for cron); also notices a newly expired license."""
    session = _session()
    now = utcnow()
    if notifications.notice_license_state(session, now):
        session.commit()
    session.close()  # hold no database connection or lock while talking to the mail server
    report = outbox.send_pending(retry_now=retry_now)
    if report.failed:
        raise click.ClickException(
            f"Sent {len(report.sent)}; {len(report.failed)} could not be sent "
            f"({report.errors[-1]}). They stay in the outbox and are retried later."
        )
    click.echo(f"Sent {len(report.sent)} message{'' if len(report.sent) == 1 else 's'}.")


# License requests (issue 9) ------------------------------------------------------------------


@licenses_cli.command("request")
@click.option("--seats", "seats_text", required=True, help="At least 5, digits only.")
@click.option("--pool", help="Add seats to this pool: intranet, extranet or readonly.")
@click.option("--move-from", "move_from", help="Move seats from this pool ...")
@click.option("--move-to", "move_to", help="... to this pool.")
@click.option("--note", default="", help="A note for the vendor.")
@click.option("--requester-email", default="", help="Where the vendor can answer you.")
def request_command(seats_text, pool, move_from, move_to, note, requester_email):
    """Send a license request to the vendor (LICENSES_VENDOR_EMAIL)."""
    if pool and (move_from or move_to):
        raise click.ClickException("Give --pool to add seats, or --move-from and --move-to.")
    if not pool and not (move_from and move_to):
        raise click.ClickException(
            "Say what to request: --pool POOL, or --move-from POOL --move-to POOL."
        )
    session = _session()
    now = utcnow()
    try:
        draft = license_requests.check(
            session,
            kind="add" if pool else "move",
            seats=seats_text,
            pool=pool,
            from_pool=move_from,
            to_pool=move_to,
            note=note,
            requester_name=cli_actor(),
            requester_email=requester_email,
            now=now,
        )
        sent = license_requests.submit(session, draft, actor=cli_actor(), now=now, path="cli")
    except license_requests.RequestError as problem:
        _refuse(f"The request was not sent. {problem}")
    session.commit()
    click.echo(
        f"Request #{sent.id} is recorded and queued for {config('VENDOR_EMAIL')}: "
        f"{license_requests.describe(sent)}. 'flask licenses mail send-pending' retries "
        "what the mail server did not take."
    )


# CSV import -----------------------------------------------------------------------------


def _echo_problems(tally) -> None:
    for problem in tally.problems:
        click.echo(problem.sentence())
    hidden = tally.problem_rows - len(tally.problems)
    if hidden:
        click.echo(f"... and {hidden:,} more rows with problems, not shown.")


class _Bar:
    """A click progress bar over bytes read or people written, shown only for long files."""

    def __init__(self, length: int, label: str, show: bool):
        self._bar = None
        self._done = 0
        if show:
            self._bar = click.progressbar(length=length, label=label, file=sys.stderr)
            self._bar.__enter__()

    def __call__(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done - self._done)
            self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


#: Files larger than this get progress bars.
_PROGRESS_BYTES = 256 * 1024


@licenses_cli.command("import-csv")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the preview only; write nothing.")
def import_csv_command(file, dry_run):
    """Import people from a CSV file: preview, then create the valid rows all together.

    Rows with problems are listed and skipped. If the valid rows need more seats than are
    free, nothing is written and the command exits 1. With --dry-run the exit status says
    whether the import would go ahead.
    """
    session = _session()
    now = utcnow()
    size = Path(file).stat().st_size
    show = size > _PROGRESS_BYTES
    name = Path(file).name
    bar = _Bar(size, "Checking", show)
    try:
        preview = csv_import.preview(session, file, name=name, now=now, progress=bar)
    except csv_import.ImportFileError as problem:
        bar.close()
        _refuse(str(problem))
    bar.close()
    lines = preview.lines()
    for line in lines[:-1]:
        click.echo(line)
    _echo_problems(preview.tally)
    click.echo(lines[-1])
    if dry_run:
        session.rollback()
        click.echo("Dry run: nothing was written.")
        sys.exit(0 if preview.can_apply else 1)  # what the import itself would do
    if not preview.can_apply and not preview.shortfalls:
        _refuse("Nothing was imported.")
    bar = _Bar(preview.tally.valid_rows, "Importing", show)
    try:
        result = csv_import.apply(
            session,
            file,
            name=name,
            actor=cli_actor(),
            now=now,
            path="cli",
            progress=bar,
            checked=preview,
        )
        session.commit()  # the people, or (after a refusal) only the audit record
    except csv_import.ImportFileError as problem:
        bar.close()
        _refuse(str(problem))
    finally:
        bar.close()
    if not result.ok:
        raise click.ClickException(" ".join(result.lines()))
    for line in result.lines():
        click.echo(line)


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

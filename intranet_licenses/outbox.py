"""The mail outbox: messages written with their event, sent after the commit, retried later.

How a message travels
---------------------
:func:`queue` adds a row to ``licenses_outbox`` in the caller's transaction, so the message
exists exactly when its event does. When that transaction commits, the row's id is handed
to the sender: in a request, after the response has gone out (``call_on_close``); outside
a request (CLI, cron, scripts), when the application context ends. The sender never runs
on a detached thread: a failure is written to the row, where the License page and
``flask licenses mail send-pending`` find it.

Sending once
------------
A sender first claims a row with one conditional statement
(``UPDATE ... SET claimed_by = me, claimed_until = lease WHERE id = :id AND sent_at IS NULL
AND (claimed_until IS NULL OR claimed_until < now)``); only the sender whose UPDATE matched
talks to the mail server. The claim is committed before the SMTP conversation, so no
database lock is held while the network is slow. A sender that dies mid-send leaves a
claim that expires after the lease, and the message is sent again by the next run: at
least once, never once per retry of the event.
"""

from __future__ import annotations

import functools
import logging
import os
import smtplib
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import after_this_request, current_app, g, has_app_context, has_request_context
from flask_mail import Connection, Mail, Message
from sqlalchemy import and_, event, or_, select, update
from sqlalchemy.orm import Session

from . import json_rows
from .extension import adapter, config
from .models import OutboxMessage, utcnow

logger = logging.getLogger("intranet_licenses.outbox")

_table = OutboxMessage.__table__
_NEW = "licenses_outbox_new"  # session.info: rows queued in this transaction
_IDS = "licenses_outbox_ids"  # session.info: their ids, once flushed
_PENDING = "licenses_outbox_pending"  # g: ids committed and not yet handed to a sender

#: Back-off after the n-th failed attempt: 1, 2, 4, ... minutes, at most 6 hours.
BACKOFF_START = timedelta(minutes=1)
BACKOFF_MAX = timedelta(hours=6)


def render(name: str, context: dict) -> tuple[str, str, str]:
    """Subject, text and HTML of ``licenses/mail/NAME*`` (templates a host can override)."""
    env = current_app.jinja_env
    subject = env.get_template(f"licenses/mail/{name}_subject.txt").render(context)
    text = env.get_template(f"licenses/mail/{name}.txt").render(context)
    html = env.get_template(f"licenses/mail/{name}.html").render(context)
    return " ".join(subject.split()), text, html


def backoff(attempts: int) -> timedelta:
    """How long to wait after ``attempts`` failed attempts."""
    return min(BACKOFF_START * 2 ** max(attempts - 1, 0), BACKOFF_MAX)


def queue(
    session,
    *,
    kind: str,
    recipient: str,
    subject: str,
    text: str,
    html: str | None,
    now: datetime,
) -> OutboxMessage:
    """Add a message to the outbox in the caller's transaction; it is sent after the commit."""
    message = OutboxMessage(
        kind=kind,
        recipient=recipient,
        subject=" ".join(subject.split())[:255],
        text=text,
        html=html,
        created_at=now,
        attempts=0,
        next_attempt_at=now,
    )
    session.add(message)
    session.info.setdefault(_NEW, []).append(message)
    return message


# After the commit: hand the new ids to a sender ------------------------------------------


def install_listeners() -> None:
    """Listen to every SQLAlchemy session (once per process)."""
    if not event.contains(Session, "after_flush", _after_flush):
        event.listen(Session, "after_flush", _after_flush)
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_transaction_end", _after_transaction_end)


def init_app(app) -> None:
    install_listeners()
    app.teardown_appcontext(_send_leftovers)


def _after_flush(session, flush_context) -> None:
    new = session.info.get(_NEW)
    if not new:
        return
    ids = session.info.setdefault(_IDS, [])
    still = []
    for message in new:
        if message.id is None:
            still.append(message)
        else:
            ids.append(message.id)
    session.info[_NEW] = still


def _after_commit(session) -> None:
    ids = session.info.pop(_IDS, None)
    session.info.pop(_NEW, None)
    if ids and has_app_context() and "licenses" in current_app.extensions:
        _schedule(ids)


def _after_transaction_end(session, transaction) -> None:
    if transaction.parent is None:  # the outermost transaction ended: drop what did not commit
        session.info.pop(_IDS, None)
        session.info.pop(_NEW, None)


def _schedule(ids: list[int]) -> None:
    pending = g.setdefault(_PENDING, [])
    pending.extend(ids)
    if has_request_context() and not g.get("licenses_outbox_hooked"):
        g.licenses_outbox_hooked = True
        after_this_request(_hand_off_after_response)


def _hand_off_after_response(response):
    """after_this_request: send once the response has gone out (the user does not wait)."""
    ids = g.pop(_PENDING, [])
    if ids:
        app = current_app._get_current_object()

        def send_now():
            with app.app_context():
                send_pending(ids=ids, retry_now=True)

        response.call_on_close(send_now)
    return response


def _send_leftovers(_exc=None) -> None:
    """teardown_appcontext: send what was committed outside a request (CLI, scripts)."""
    ids = g.pop(_PENDING, None)
    if ids:
        send_pending(ids=ids, retry_now=True)


# Sending -------------------------------------------------------------------------------


class _TimedConnection(Connection):
    """Flask-Mail's connection, opened with a socket timeout (Flask-Mail sets none)."""

    def __init__(self, mail, timeout: float):
        super().__init__(mail)
        self.timeout = timeout

    def configure_host(self):
        mail = self.mail
        smtp = smtplib.SMTP_SSL if mail.use_ssl else smtplib.SMTP
        host = smtp(mail.server, mail.port, timeout=self.timeout)
        host.set_debuglevel(int(mail.debug))
        if mail.use_tls:
            host.starttls()
        if mail.username and mail.password:
            host.login(mail.username, mail.password)
        return host


def _mail_state():
    """The host's Flask-Mail state, or one made from the app's MAIL_* config."""
    state = current_app.extensions.get("mail")
    if state is None:
        state = Mail().init_mail(current_app.config, current_app.debug, current_app.testing)
    return state


def _sender():
    """LICENSES_MAIL_SENDER, MAIL_DEFAULT_SENDER (an address or a (name, address) pair), or
    intranet-licenses@ the site name."""
    sender = config("MAIL_SENDER") or current_app.config.get("MAIL_DEFAULT_SENDER")
    if sender:
        return sender
    host = str(config("SITE_NAME")).split(":")[0] or "localhost"
    return f"intranet-licenses@{host}"


def _deliver(row) -> None:
    """Send one outbox row through Flask-Mail, with LICENSES_MAIL_TIMEOUT on every socket."""
    sender = _sender()
    message = Message(
        subject=row.subject,
        recipients=[row.recipient],
        body=row.text,
        html=row.html,
        sender=sender,
    )
    # The same Message-ID on every attempt, so a copy sent twice can be recognised.
    address = sender[1] if isinstance(sender, tuple | list) else str(sender)
    domain = address.rpartition("@")[2].strip("> ") or "localhost"
    message.msgId = f"<licenses-outbox-{row.id}-{row.created_at:%Y%m%d%H%M%S}@{domain}>"
    with _TimedConnection(_mail_state(), float(config("MAIL_TIMEOUT"))) as connection:
        connection.send(message)


def _claimable(now: datetime):
    return and_(
        _table.c.sent_at.is_(None),
        or_(_table.c.claimed_until.is_(None), _table.c.claimed_until < now),
    )


@dataclass
class SendReport:
    """What one run of the sender did."""

    sent: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [error for _, error in self.failed]


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def send_pending(
    *, ids: list[int] | None = None, retry_now: bool = False, limit: int = 500, now=None
) -> SendReport:
    """Claim and send unsent messages (those due, or all with ``retry_now``); never raises.

    ``ids`` limits the run to these rows (the sender after a commit passes the new ones,
    with ``retry_now`` since they were just written).
    Each row is claimed, sent and recorded on its own, so one bad message or a slow server
    delays only itself.
    """
    engine = adapter().db.engine
    me = _me()
    timeout = float(config("MAIL_TIMEOUT"))
    report = SendReport()
    now = now or utcnow()
    query = select(_table.c.id).where(_claimable(now)).order_by(_table.c.id).limit(limit)
    if not retry_now:
        query = query.where(_table.c.next_attempt_at <= now)
    if ids is not None:
        query = query.where(_table.c.id.in_(ids))
    try:
        with engine.connect() as conn:
            candidates = conn.execute(query).scalars().all()
    except Exception:
        logger.exception("Could not read the mail outbox.")
        return report
    for message_id in candidates:
        _send_one(engine, message_id, me, timeout, report, retry_now, now)
    return report


def _send_one(engine, message_id: int, me: str, timeout: float, report, retry_now, now) -> None:
    lease = now + timedelta(seconds=max(300.0, 10 * timeout))
    claim = (
        update(_table)
        .where(_table.c.id == message_id, _claimable(now))
        .values(claimed_by=me, claimed_until=lease)
    )
    if not retry_now:
        claim = claim.where(_table.c.next_attempt_at <= now)
    try:
        with engine.begin() as conn:
            if conn.execute(claim).rowcount != 1:
                return  # another sender has it, or it was sent meanwhile
            row = conn.execute(select(_table).where(_table.c.id == message_id)).one()
    except Exception:
        logger.exception("Could not claim outbox message %s.", message_id)
        return
    error = None
    try:
        _deliver(row)
    except Exception as exc:  # SMTP refusals, timeouts, DNS, a bad header: all kept on the row
        error = f"{type(exc).__name__}: {exc}".strip()[:2000] or type(exc).__name__
        logger.warning("Outbox message %s was not sent: %s", message_id, error)
    done = max(utcnow(), now)
    attempts = row.attempts + 1
    if error is None:
        values = {"sent_at": done, "last_error": None}
    else:
        values = {"last_error": error, "next_attempt_at": done + backoff(attempts)}
    try:
        with engine.begin() as conn:
            conn.execute(
                update(_table)
                .where(_table.c.id == message_id, _table.c.claimed_by == me)
                .values(attempts=attempts, claimed_by=None, claimed_until=None, **values)
            )
    except Exception:
        logger.exception("Could not record the outcome of outbox message %s.", message_id)
    if error is None:
        report.sent.append(message_id)
    else:
        report.failed.append((message_id, error))


# What the License page shows ---------------------------------------------------------------


@dataclass(frozen=True)
class OutboxState:
    """Rows of ``licenses_outbox`` (named tuples, attributes named as OutboxMessage's), for
    the page."""

    last_sent: tuple | None
    waiting: list[tuple]
    failed: list[tuple]


#: What the License page shows of a message (not the bodies: 50 unsent messages are read).
_SHOWN = (
    "id", "kind", "recipient", "subject", "created_at", "attempts", "next_attempt_at",
    "last_error", "sent_at",
)  # fmt: skip


#: How many unsent messages the License page lists.
_UNSENT_SHOWN = 50
#: The last one sent first (if any), then the unsent ones by id.
_STATE_ORDER = (_table.c.sent_at.is_(None), _table.c.id)


@functools.cache
def _state_statement(kinds: tuple[str, ...] | None):
    """The last message sent and the first unsent ones, in one select built once (the
    License page reads it on every view; building it cost more than running it).

    One select with an OR rather than a union of two ordered selects: PostgreSQL plans it
    on every view (see ``seats._figures_statements``), and the union took twice as long to
    plan (0.14 ms of server CPU, now 0.06).
    """

    def of_kinds(condition):
        return and_(condition, _table.c.kind.in_(kinds)) if kinds else condition

    last_sent = (
        select(_table.c.id)
        .where(of_kinds(_table.c.sent_at.is_not(None)))
        .order_by(_table.c.sent_at.desc(), _table.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    shown = [_table.c[name] for name in _SHOWN]
    return (
        select(*shown)
        .where(or_(of_kinds(_table.c.sent_at.is_(None)), _table.c.id == last_sent))
        .limit(_UNSENT_SHOWN + 1)  # in ``_STATE_ORDER`` (``state_column``)
    )


@functools.cache
def state_column(kinds: tuple[str, ...] | None = None):
    """``state``'s rows as one column (``outbox``) to read with another select (the License
    page reads it with the seat figures: one statement fewer); ``state_from`` makes the
    state of what it read."""
    return json_rows.column(_state_statement(kinds), order_by=_STATE_ORDER, label="outbox")


def state(session, *, kinds: tuple[str, ...] | None = None) -> OutboxState:
    """The last message sent, and the unsent ones (waiting: never tried; failed: tried)."""
    value = session.connection().execute(select(state_column(kinds))).scalar_one()
    return state_from(value, kinds=kinds)


def state_from(value, *, kinds: tuple[str, ...] | None = None) -> OutboxState:
    """The state read as ``state_column(kinds)``."""
    rows = json_rows.rows(value, _state_statement(kinds))
    unsent = [row for row in rows if row.sent_at is None][:_UNSENT_SHOWN]
    return OutboxState(
        last_sent=next((row for row in rows if row.sent_at is not None), None),
        waiting=[m for m in unsent if not m.attempts],
        failed=[m for m in unsent if m.attempts],
    )

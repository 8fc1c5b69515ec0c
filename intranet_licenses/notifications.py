"""The Responsible person and the over-limit email (rules 6, 7 and 10).

When to send
------------
"Exceeded" events (a refusal for lack of a seat, a sync that leaves people waiting, a
license installed below usage, a license that is no longer valid) are reported with
:func:`exceeded`. It only notes the event in the session; when that session commits, in
the same transaction and just before the COMMIT, each pool with an event is put into an
*episode* with one conditional statement::

    UPDATE licenses_episode SET open = true, opened_at = :now WHERE pool = :p AND open = false

Only the transaction whose UPDATE matched writes the email (to the outbox) and an audit
row; every later event of the episode, in this process or another, matches nothing. On
PostgreSQL a concurrent transaction waits on the row lock and then re-checks ``open``
against the committed value; on SQLite writers run one after another. Episode rows are
touched at the very end of a transaction, in pool order, after any seat counter, so two
transactions never wait on each other in a cycle.

An episode closes when its pool has a free seat again. The seat service marks the pools
where seats were freed (block, delete, move, recount) and a license install marks every
pool; at commit those pools are checked against the counters and the limits in force, in
the same transaction. A refusal after that is a new episode and a new email. Reaching the
limit exactly is not an event, and page views or restarts send nothing.

An episode that is open already
-------------------------------
Most refusals at a full pool happen while its episode is open. The seat service reads the
pool's counter and its episode row in one statement, and refuses when that statement finds
the pool full; when the same statement also finds the episode open, the refusal belongs to
that episode, and nothing more is decided or written for it at commit (no UPDATE). This is
as safe as the conditional UPDATE: a statement sees one committed state of the database,
and an episode is closed only in the transaction that frees the seat (or installs the
license), so a statement that sees the pool full and the episode open is from before the
close, and a refusal after a close sees the episode closed and goes through the
conditional UPDATE above (one email for the new episode). A refusal found by the counter's
conditional UPDATE itself (a race for the last seat), and every other event, is decided by
the conditional UPDATE at commit as before.

An expired (or otherwise no longer valid) license is noticed by
:func:`notice_license_state`, called by the extension's pages and by ``flask licenses
status`` and ``mail send-pending``: the last state seen is kept in ``licenses_setting``
and changed with a conditional UPDATE, so it is told once.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from email_validator import EmailNotValidError, validate_email
from flask import current_app, has_app_context
from sqlalchemy import event, func, insert, select, update
from sqlalchemy.orm import Session

from . import audit, licensing, outbox
from .errors import LicensesError
from .extension import config
from .models import (
    AWAITING_LICENSE,
    POOLS,
    Episode,
    InstalledLicense,
    Profile,
    Setting,
)

RESPONSIBLE_PERSON = "responsible_person"
LICENSE_STATE = "license_state"

#: What raised an exceeded event (the audit outcome or action it comes with).
TRIGGERS = {
    "refused": "refused for lack of a seat",
    "waiting": "left waiting for a license",
    "install": "a license was installed that allows fewer seats than are in use",
    "expired": "the license in force is no longer valid",
    "recount": "a recount found more people active than the license allows "
    "(written to the database outside the seat service)",
}
#: How a path is named in the message.
PATHS = {
    "single": "adding one person",
    "page": "the People page",
    "cli": "the command line",
    "csv": "a CSV upload",
    "directory": "a directory sync",
    "sso": "a single sign-on (SSO) sign-in",
    "host": "the intranet's own code",
    "license": "the daily license check",
}
#: Usernames named in one message, at most.
MAX_USERNAMES = 20

_EVENTS = "licenses_exceeded"  # session.info: pending exceeded events
_FREED = "licenses_seats_freed"  # session.info: pools where seats were freed, and when

_episodes = Episode.__table__
_settings = Setting.__table__


# The Responsible person ------------------------------------------------------------------


class AddressError(LicensesError, ValueError):
    """An address that cannot be the Responsible person; ``str()`` says why, for a person."""


def responsible_person(session) -> str | None:
    """The address told when a limit is exceeded, or None when nobody is set."""
    setting = session.get(Setting, RESPONSIBLE_PERSON)
    return setting.value if setting is not None and setting.value else None


def check_address(value: str | None) -> str:
    """One plain email address, normalised; AddressError says what is wrong with anything else."""
    raw = value if value is not None else ""
    if "\r" in raw or "\n" in raw:
        raise AddressError(
            "The address contains a line break. Enter one email address on one line."
        )
    text = raw.strip()
    if not text:
        raise AddressError("Enter an email address, for example it-licenses@example.com.")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise AddressError(
            "The address contains a control character. Enter one plain email address."
        )
    if "<" in text or ">" in text or '"' in text:
        raise AddressError(
            f"'{text}' has a display name or angle brackets. Enter the address alone, "
            "for example it-licenses@example.com, without a name."
        )
    if text.count("@") > 1 or any(sep in text for sep in (",", ";")):
        raise AddressError(
            f"'{text}' is more than one address. Enter one address; to reach several "
            "people, use a group or distribution address."
        )
    if " " in text or "@" not in text:
        raise AddressError(
            f"'{text}' is not a valid email address. Enter one address such as "
            "it-licenses@example.com, without spaces."
        )
    if len(text) > 254:
        raise AddressError("The address is longer than 254 characters, the most email allows.")
    local = text.rpartition("@")[0]
    if not local.isascii():
        others = ", ".join(dict.fromkeys(ch for ch in local if not ch.isascii()))
        raise AddressError(
            f"'{text}' has letters outside ASCII before the @ ({others}); the mail server "
            "cannot deliver to such an address. Use an address whose part before the @ is "
            "plain ASCII (the domain may be in any script)."
        )
    try:
        # allow_smtputf8=False: the mail server is not assumed to speak SMTPUTF8; a domain
        # in another script is still fine (it is sent as IDNA).
        return validate_email(text, check_deliverability=False, allow_smtputf8=False).normalized
    except EmailNotValidError as exc:
        raise AddressError(f"'{text}' is not a valid email address: {exc}") from None


def set_responsible_person(
    session, value: str | None, *, actor: str, now: datetime, path: str
) -> tuple[str | None, str | None]:
    """Set (or with None, clear) the Responsible person; returns (old, new).

    A bad address raises AddressError and changes nothing. Every change is audited.
    """
    new = None if value is None else check_address(value)
    setting = session.get(Setting, RESPONSIBLE_PERSON)
    old = setting.value if setting is not None and setting.value else None
    if old == new:
        return old, new
    if setting is None:
        session.add(Setting(name=RESPONSIBLE_PERSON, value=new or ""))
    else:
        setting.value = new or ""
    audit.record(
        session,
        at=now,
        actor=actor,
        action="setting",
        path=path,
        subject=RESPONSIBLE_PERSON,
        detail=f"Responsible person: {old or '(none)'} -> {new or '(none)'}",
    )
    session.flush()
    return old, new


# Exceeded events ---------------------------------------------------------------------------


@dataclass
class _Event:
    pool: str
    trigger: str
    path: str
    usernames: list[str]
    count: int
    now: datetime
    detail: str = ""
    episode_open: bool | None = None


def exceeded(
    session,
    *,
    pool: str,
    trigger: str,
    path: str,
    usernames=(),
    count: int = 1,
    now: datetime,
    detail: str = "",
    episode_open: bool | None = None,
) -> None:
    """Report that ``pool`` was exceeded; the email is decided when the session commits.

    ``trigger`` is one of :data:`TRIGGERS` (``refused``, ``waiting``, ``install``,
    ``expired``); ``path`` how it happened (``single``, ``csv``, ``directory``, ...);
    ``usernames`` who was refused or left waiting (the message names up to 20) and
    ``count`` how many in all. Several reports in one transaction make one message: per
    trigger and path the usernames are merged and the count is the larger of the given
    counts and the number of distinct usernames, so a CSV import may report each row, or
    once with the totals, or both.

    ``episode_open`` is for a refusal that read the pool's counter and its episode row in
    one statement (the seat service does): True when that statement found the episode
    open already. See "An episode that is open already" in the module docstring.
    """
    if pool not in POOLS:
        raise ValueError(f"Unknown pool {pool!r}")
    session.info.setdefault(_EVENTS, []).append(
        _Event(
            pool,
            trigger,
            path,
            [str(u) for u in usernames],
            int(count),
            now,
            detail,
            episode_open,
        )
    )


def seats_freed(session, pools, now: datetime) -> None:
    """Note that seats were freed (or limits changed) in ``pools``: check them at commit."""
    freed = session.info.setdefault(_FREED, {})
    for pool in pools:
        freed[pool] = max(freed.get(pool, now), now)


def install_listeners() -> None:
    """Listen to every SQLAlchemy session (once per process)."""
    if not event.contains(Session, "before_commit", _before_commit):
        event.listen(Session, "before_commit", _before_commit)
        event.listen(Session, "after_transaction_end", _after_transaction_end)


def init_app(app) -> None:
    install_listeners()
    outbox.init_app(app)


def _after_transaction_end(session, transaction) -> None:
    if transaction.parent is None:
        session.info.pop(_EVENTS, None)
        session.info.pop(_FREED, None)


def _before_commit(session) -> None:
    """In the committing transaction: close episodes that have a free seat, open new ones."""
    events = session.info.pop(_EVENTS, None)
    freed = session.info.pop(_FREED, None)
    if not freed and all(_told(ev) for ev in events or ()):
        return  # the commit of most refusals: no episode to open or close, no flush
    if not has_app_context() or "licenses" not in current_app.extensions:
        return
    session.flush()
    if freed:
        _close_episodes(session, freed)
    if events:
        _open_episodes(session, events)


def _told(ev: _Event) -> bool:
    """True for an event of an episode known to be open that needs no decision at commit:
    it saw the episode open (see the module docstring) and is not an expired license, which
    ``_open_episodes`` names even in an open episode."""
    return ev.episode_open is True and ev.trigger != "expired"


def _used(session) -> dict[str, int]:
    from .seats import usage  # seats imports this module

    return usage(session)


def _close_episodes(session, freed: dict[str, datetime]) -> None:
    conn = session.connection()
    open_pools = set(
        conn.execute(
            select(_episodes.c.pool).where(
                _episodes.c.open.is_(True), _episodes.c.pool.in_(list(freed))
            )
        ).scalars()
    )
    if not open_pools:
        return
    now = max(freed.values())
    used = _used(session)
    limits = licensing.limits(session, now.date())
    for pool in sorted(open_pools):
        if limits[pool] is None or used[pool] < limits[pool]:
            conn.execute(
                update(_episodes)
                .where(_episodes.c.pool == pool, _episodes.c.open.is_(True))
                .values(open=False, closed_at=now)
            )


def _open_episode(conn, pool: str, now: datetime) -> bool:
    """Open the pool's episode; True only for the one transaction that opened it."""
    opened = conn.execute(
        update(_episodes)
        .where(_episodes.c.pool == pool, _episodes.c.open.is_(False))
        .values(open=True, opened_at=now, closed_at=None)
    ).rowcount
    if opened == 1:
        return True
    exists = conn.execute(select(_episodes.c.pool).where(_episodes.c.pool == pool)).first()
    if exists is None:  # the row was removed by hand: make it again, open
        conn.execute(insert(_episodes).values(pool=pool, open=True, opened_at=now))
        return True
    return False


@dataclass
class TriggerLine:
    """One cause in the message: a trigger on a path, with who and how many."""

    trigger: str
    path: str
    count: int
    usernames: list[str]
    more: int
    detail: str = ""

    @property
    def what(self) -> str:
        return TRIGGERS.get(self.trigger, self.trigger)

    @property
    def where(self) -> str:
        return PATHS.get(self.path, self.path)


@dataclass
class PoolLine:
    """One exceeded pool in the message."""

    pool: str
    limit: int | None
    used: int
    waiting: int
    shortfall: int
    triggers: list[TriggerLine] = field(default_factory=list)


def _merge(events: list[_Event]) -> list[TriggerLine]:
    groups: dict[tuple[str, str], list[_Event]] = defaultdict(list)
    for ev in events:
        groups[(ev.trigger, ev.path)].append(ev)
    lines = []
    for (trigger, path), group in groups.items():
        names = list(dict.fromkeys(name for ev in group for name in ev.usernames))
        count = max([len(names), *(ev.count for ev in group)])
        details = list(dict.fromkeys(ev.detail for ev in group if ev.detail))
        lines.append(
            TriggerLine(
                trigger=trigger,
                path=path,
                count=count,
                usernames=names[:MAX_USERNAMES],
                more=max(count - min(len(names), MAX_USERNAMES), 0),
                detail=" ".join(details),
            )
        )
    return lines


def _open_episodes(session, events: list[_Event]) -> None:
    conn = session.connection()
    by_pool: dict[str, list[_Event]] = defaultdict(list)
    for ev in events:
        by_pool[ev.pool].append(ev)
    now = max(ev.now for ev in events)
    opened = []
    for pool in sorted(by_pool):
        events_of_pool = by_pool[pool]
        # Events that all saw the episode open, in the statement that refused them, belong
        # to it: told already, nothing to decide (see the module docstring).
        told = all(ev.episode_open is True for ev in events_of_pool)
        fresh = not told and _open_episode(conn, pool, now)
        # An expired license is told once by notice_license_state: a pool whose episode
        # was already open is named too, since its limit now reads 0 for a new reason.
        if fresh or any(ev.trigger == "expired" for ev in events_of_pool):
            opened.append(pool)
    if not opened:
        return
    used = _used(session)
    limits = licensing.limits(session, now.date())
    waiting = dict(
        session.execute(
            select(Profile.pool, func.count())
            .where(Profile.block_reason == AWAITING_LICENSE)
            .group_by(Profile.pool)
        ).all()
    )
    lines = []
    for pool in opened:
        limit = limits[pool]
        lines.append(
            PoolLine(
                pool=pool,
                limit=limit,
                used=used[pool],
                waiting=waiting.get(pool, 0),
                shortfall=max(used[pool] + waiting.get(pool, 0) - (limit or 0), 1)
                if limit is not None
                else 0,
                triggers=_merge(by_pool[pool]),
            )
        )
    recipient = responsible_person(session)
    if recipient:
        subject, text, html = render_exceeded(session, lines, now)
        outbox.queue(
            session,
            kind="exceeded",
            recipient=recipient,
            subject=subject,
            text=text,
            html=html,
            now=now,
        )
        told = f"Email to the Responsible person ({recipient}) queued."
    else:
        told = "No Responsible person is set: nobody was told."
    for line in lines:
        first = line.triggers[0]
        audit.record(
            session,
            at=now,
            actor="system",
            action="exceeded",
            path=first.path,
            pool=line.pool,
            detail=(
                f"The {line.pool} pool is exceeded ({line.used} of "
                f"{'Unlimited' if line.limit is None else line.limit} in use; "
                f"{first.what}). {told}"
            ),
        )


# The message ----------------------------------------------------------------------------


def external_url(endpoint: str, **values) -> str:
    """An absolute link for an email: LICENSES_EXTERNAL_URL (or https://SITE_NAME) + path.

    Never built from a request's Host header, which a client chooses.
    """
    base = config("EXTERNAL_URL")
    if not base:
        host = str(config("SITE_NAME"))
        if host.endswith(":443"):
            host = host[: -len(":443")]
        base = f"https://{host}"
    path = current_app.url_map.bind("localhost").build(endpoint, values)
    return base.rstrip("/") + path


def request_url(pool: str | None = None, seats: int | None = None) -> str:
    """The license-request form (pre-filled), or the License page where there is none yet."""
    if "licenses.request_page" in current_app.view_functions:
        values = {}
        if pool:
            values["pool"] = pool
        if seats:
            values["seats"] = max(seats, 5)
        return external_url("licenses.request_page", **values)
    return external_url("licenses.license_page")


def render_exceeded(session, pools: list[PoolLine], now: datetime) -> tuple[str, str, str]:
    """(subject, text, html) of the over-limit email, from templates a host can override."""
    status = licensing.current(session, now.date()).status
    context = {
        "site_name": config("SITE_NAME"),
        "pools": pools,
        "now": now,
        "license_valid": status.valid,
        "license_sentence": status.sentence,
        "request_url": request_url(pools[0].pool, pools[0].shortfall),
        "license_url": external_url("licenses.license_page"),
        "people_url": external_url("licenses.people_page"),
        "max_usernames": MAX_USERNAMES,
    }
    return outbox.render("exceeded", context)


# An expired license, noticed once -----------------------------------------------------------


def remember_license_state(session, state: str) -> None:
    """Record the license state now in force (install calls it with 'valid')."""
    setting = session.get(Setting, LICENSE_STATE)
    if setting is None:
        session.add(Setting(name=LICENSE_STATE, value=state))
    else:
        setting.value = state


def license_state_seen():
    """The license state last seen, as a column ("seen") to add to another select."""
    seen = select(_settings.c.value).where(_settings.c.name == LICENSE_STATE)
    return seen.scalar_subquery().label("seen")


@functools.cache
def _license_state_statement():
    """The license in force and the state last seen, in one statement (every page asks)."""
    return select(*licensing.current_columns(), license_state_seen())


def notice_license_state(session, now: datetime, read=None) -> bool:
    """Compare the license's state with the last one seen; report a newly invalid license.

    ``read``: (the license in force, the state last seen) when the caller has read them
    already (a page reads them with the seat figures, ``seats.license_and_figures``).
    Returns True when the state changed (the caller commits). Of several processes that
    notice the same change, one wins the conditional UPDATE and reports it.
    """
    if read is None:
        row = session.connection().execute(_license_state_statement()).one()._mapping
        read = licensing.current_from(row, now.date()), row["seen"]
    current, seen = read
    status = current.status
    if seen == status.state:
        return False
    if seen is None:  # the migration made the row; it was removed by hand
        won = True
        session.add(Setting(name=LICENSE_STATE, value=status.state))
    else:
        won = (
            session.connection()
            .execute(
                update(_settings)
                .where(_settings.c.name == LICENSE_STATE, _settings.c.value == seen)
                .values(value=status.state)
            )
            .rowcount
            == 1
        )
    if not won or status.valid or status.state == "none":
        return won
    if seen and seen != "valid":
        return won  # it was not valid before either: told already
    installed = session.scalar(select(func.count()).select_from(InstalledLicense))
    if not installed:
        return won
    used = _used(session)
    for pool in POOLS:
        if used[pool] > 0:
            exceeded(
                session,
                pool=pool,
                trigger="expired",
                path="license",
                count=used[pool],
                now=now,
                detail=status.sentence,
            )
    return won


# The License page --------------------------------------------------------------------------


@dataclass(frozen=True)
class PageInfo:
    responsible: str | None
    outbox: outbox.OutboxState
    #: ``pool`` and ``opened_at`` of each pool in an exceeded episode, in pool order.
    open_episodes: list


@dataclass(frozen=True)
class _OpenEpisode:
    pool: str
    opened_at: datetime


def page_info(session, read=None) -> PageInfo:
    """What the License page shows about notifications.

    ``read``: a row holding ``page_info_columns()``, when the caller read them with its own
    statement (the License page reads them with the seat figures).
    """
    if read is None:
        read = session.connection().execute(select(*page_info_columns())).one()._mapping
    episodes = [
        _OpenEpisode(pool, read[f"episode_{pool}"])
        for pool in POOLS
        if read[f"episode_{pool}"] is not None
    ]
    return PageInfo(
        responsible=read["responsible"] or None,
        outbox=outbox.state_from(read["outbox"]),
        open_episodes=episodes,
    )


@functools.cache
def page_info_columns() -> tuple:
    """The Responsible person, when each pool's open episode opened (NULL when its episode
    is closed) and the outbox's state (``outbox.state_column``), as columns to add to
    another select."""
    responsible = select(_settings.c.value).where(_settings.c.name == RESPONSIBLE_PERSON)
    opened = [
        select(Episode.opened_at)
        .where(Episode.pool == pool, Episode.open.is_(True))
        .scalar_subquery()
        .label(f"episode_{pool}")
        for pool in POOLS
    ]
    return (responsible.scalar_subquery().label("responsible"), *opened, outbox.state_column())

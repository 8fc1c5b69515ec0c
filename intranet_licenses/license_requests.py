"""License requests (rule 8): check, store and email them; mark them fulfilled or cancelled."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from . import audit, json_rows, licensing, notifications, outbox
from .errors import LicensesError
from .extension import config
from .models import (
    OPEN_REQUEST_STATUSES,
    POOLS,
    LicenseRequest,
)
from .seats import character_name
from .seats import usage as seats_in_use

#: The fewest seats one request may ask for.
MIN_SEATS = 5
_DIGITS = re.compile(r"[0-9]+")


class RequestError(LicensesError, ValueError):
    """A request that cannot be sent; ``str()`` says what to change, for a person."""


def parse_seats(value, ceiling: int | None = None) -> int:
    """The number of seats from text: digits 0-9 only (spaces around allowed), 5 to ceiling.

    One check for the form and the command line: WTForms' IntegerField and click's INT take
    ``+5``, ``1_000`` and digits of other scripts, which this refuses.
    """
    ceiling = ceiling if ceiling is not None else int(config("MAX_REQUEST_SEATS"))
    expected = f"Enter a whole number of seats from {MIN_SEATS} to {ceiling}, in digits 0-9"
    text = "" if value is None else str(value).strip()
    if not text:
        raise RequestError(f"The number of seats is missing. {expected}.")
    if not _DIGITS.fullmatch(text):
        raise RequestError(
            f"'{text}' is not a number of seats. {expected}, without signs, spaces, "
            "separators or decimals."
        )
    if len(text) > 12 or int(text) > ceiling:
        raise RequestError(f"{text} seats is more than one request may ask for. {expected}.")
    seats = int(text)
    if seats < MIN_SEATS:
        raise RequestError(f"A request asks for at least {MIN_SEATS} seats, not {seats}.")
    return seats


def pool_name(value: str | None, what: str) -> str:
    name = (value or "").strip().lower()
    aliases = {"read-only": "readonly"}
    name = aliases.get(name, name)
    if name not in POOLS:
        raise RequestError(f"Choose the {what}: one of {', '.join(POOLS)}.")
    return name


def _license_limits(session, now: datetime) -> dict[str, int | None]:
    """The limits the installed license states (0 when none is installed), valid or not."""
    status = licensing.current(session, now.date()).status
    if status.license is None:
        return dict.fromkeys(POOLS, 0)
    return {pool: status.license.pool_limit(pool) for pool in POOLS}


def _encode(limits: dict[str, int | None]) -> str:
    return " ".join(f"{p}={'' if v is None else v}" for p, v in limits.items())


def _decode(text: str) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    for pair in text.split():
        pool, _, value = pair.partition("=")
        found[pool] = int(value) if value else None
    return found


def _no_control_characters(text: str, what: str, allowed: str = "") -> str:
    """``text`` unchanged, or RequestError naming the control character in it (a NUL byte
    would be stored and emailed, or refused by PostgreSQL)."""
    for ch in text:
        if unicodedata.category(ch) == "Cc" and ch not in allowed:
            extra = " Line breaks and tabs are fine." if allowed else ""
            raise RequestError(
                f"{what} contains a control character ({character_name(ch)}); remove it "
                f"and try again.{extra}"
            )
    return text


@dataclass(frozen=True)
class Draft:
    """A checked request, ready to be stored."""

    kind: str
    seats: int
    pool: str | None
    from_pool: str | None
    to_pool: str | None
    note: str
    requester_name: str
    requester_email: str


def check(
    session,
    *,
    kind: str,
    seats,
    pool=None,
    from_pool=None,
    to_pool=None,
    note: str = "",
    requester_name: str = "",
    requester_email: str = "",
    now: datetime,
) -> Draft:
    """Check a request's fields; RequestError says the first thing to change."""
    number = parse_seats(seats)
    note = (note or "").strip()
    if len(note) > 2000:
        raise RequestError("The note is longer than 2000 characters; shorten it.")
    _no_control_characters(note, "The note", allowed="\r\n\t")
    requester_name = _no_control_characters((requester_name or "").strip(), "Your name")
    email = (requester_email or "").strip()
    if email:
        try:
            email = notifications.check_address(email)
        except notifications.AddressError as problem:
            raise RequestError(f"Your email address: {problem}") from None
    limits = _license_limits(session, now)
    if kind == "add":
        target = pool_name(pool, "pool to add seats to")
        if limits[target] is None:
            raise RequestError(f"The {target} pool is Unlimited already; nothing to request.")
        return Draft("add", number, target, None, None, note, requester_name, email)
    if kind != "move":
        raise RequestError("Choose what to request: more seats, or a move between pools.")
    source = pool_name(from_pool, "pool to move seats from")
    target = pool_name(to_pool, "pool to move seats to")
    if source == target:
        raise RequestError(f"Seats can only move between two different pools, not {source}.")
    if limits[source] is None:
        raise RequestError(
            f"The {source} pool is Unlimited: seats cannot be moved out of it. "
            "Ask for more seats in the other pool instead."
        )
    used = seats_in_use(session)[source]
    unused = max(limits[source] - used, 0)
    if number > unused:
        raise RequestError(
            f"The {source} pool has {unused} unused seat{'' if unused == 1 else 's'} "
            f"({used} of {limits[source]} in use): move at most {unused}, or block people "
            "there first."
        )
    return Draft("move", number, None, source, target, note, requester_name, email)


def describe(request: LicenseRequest) -> str:
    """'10 more intranet seats' or 'move 5 seats from extranet to readonly'."""
    if request.kind == "add":
        return f"{request.seats} more {request.pool} seats"
    return f"move {request.seats} seats from {request.from_pool} to {request.to_pool}"


def _by_key(session, key: str) -> LicenseRequest | None:
    return session.scalar(select(LicenseRequest).where(LicenseRequest.submission_key == key))


class AlreadySent(LicensesError):
    """This form was submitted before; ``request`` is what the first submission stored."""

    def __init__(self, request: LicenseRequest):
        super().__init__(f"This request was sent already (request #{request.id}).")
        self.request = request


def submit(
    session, draft: Draft, *, actor: str, now: datetime, path: str, key: str | None = None
) -> LicenseRequest:
    """Store the request and queue its emails (vendor, copy to the Responsible person).

    ``key`` identifies the form it came from: a second submission raises AlreadySent
    instead of storing a second request (the unique key decides, also for two clicks
    racing). The caller commits.
    """
    vendor = config("VENDOR_EMAIL")
    if not vendor:
        raise RequestError(
            "No vendor address is configured (LICENSES_VENDOR_EMAIL), so the request "
            "cannot be sent. Ask the intranet's operator to set it."
        )
    if key and not key.isprintable():
        raise RequestError(
            "The form arrived damaged (its submission key contains a character that does "
            "not print). Open the request form again and send it from there."
        )
    if key and (existing := _by_key(session, key)) is not None:
        raise AlreadySent(existing)
    request = LicenseRequest(
        kind=draft.kind,
        seats=draft.seats,
        pool=draft.pool,
        from_pool=draft.from_pool,
        to_pool=draft.to_pool,
        note=draft.note,
        requester_name=draft.requester_name,
        requester_email=draft.requester_email,
        status="sent",
        limits_before=_encode(_license_limits(session, now)),
        created_at=now,
        created_by=actor,
        submission_key=key or None,
    )
    session.add(request)
    try:
        session.flush()
    except IntegrityError:  # two clicks racing: the unique key let the other one through
        session.rollback()  # (nothing else of this request's transaction is kept)
        existing = _by_key(session, key) if key else None
        if existing is None:
            raise
        raise AlreadySent(existing) from None
    subject, text, html = render(session, request, now)
    outbox.queue(
        session, kind="request", recipient=vendor, subject=subject, text=text, html=html, now=now
    )
    copy = notifications.responsible_person(session)
    if copy and copy.lower() != vendor.lower():
        outbox.queue(
            session,
            kind="request-copy",
            recipient=copy,
            subject=f"Copy: {subject}",
            text=text,
            html=html,
            now=now,
        )
    audit.record(
        session,
        at=now,
        actor=actor,
        action="request",
        path=path,
        pool=draft.pool or draft.to_pool,
        detail=f"Request #{request.id}: {describe(request)}, sent to {vendor}",
    )
    return request


def render(session, request: LicenseRequest, now: datetime) -> tuple[str, str, str]:
    """(subject, text, html) of the email to the vendor, from overridable templates."""
    status = licensing.current(session, now.date()).status
    lic = status.license
    used = seats_in_use(session)
    limits = _license_limits(session, now)
    context = {
        "site_name": config("SITE_NAME"),
        "request": request,
        "what": describe(request),
        "license_fields": [
            (name, lic.get(name) if lic else None)
            for name in ("Registered-To", "Host-Id", "Host-Name", "Issued", "Expires")
        ],
        "license_sentence": status.sentence,
        "usage": [(pool, used.get(pool, 0), limits[pool]) for pool in POOLS],
        "now": now,
    }
    return outbox.render("request", context)


_requests = LicenseRequest.__table__
#: How many requests the License page lists, newest first.
HISTORY_SHOWN = 50
#: What the License page shows of a request.
_HISTORY_SHOWN_COLUMNS = ("id", "created_at", "kind", "seats", "pool", "from_pool", "to_pool",
                          "note", "requester_name", "status")  # fmt: skip
#: Built once: the License page reads it on every view (ordered by ``HISTORY_COLUMN``).
_HISTORY = select(*(_requests.c[name] for name in _HISTORY_SHOWN_COLUMNS)).limit(HISTORY_SHOWN)
#: ``history``'s rows as one column (``license_requests``) to read with another select (the
#: License page reads it with the seat figures: one statement fewer).
HISTORY_COLUMN = json_rows.column(
    _HISTORY, order_by=(_requests.c.id.desc(),), label="license_requests"
)


def history(session) -> list:
    """The newest requests (``HISTORY_SHOWN``), as named tuples with the attribute names of
    LicenseRequest that the License page shows."""
    return history_from(session.connection().execute(select(HISTORY_COLUMN)).scalar_one())


def history_from(value) -> list:
    """The requests read as ``HISTORY_COLUMN``."""
    return json_rows.rows(value, _HISTORY)


def set_status(session, request_id: int, status: str, *, actor: str, now: datetime, path):
    """Cancel or acknowledge an open request; RequestError when it is not open."""
    request = session.get(LicenseRequest, request_id)
    if request is None:
        raise RequestError(f"There is no license request #{request_id}.")
    if request.status not in OPEN_REQUEST_STATUSES:
        raise RequestError(
            f"Request #{request.id} is {request.status}; only an open request can change."
        )
    old = request.status
    request.status = status
    request.updated_at = now
    audit.record(
        session,
        at=now,
        actor=actor,
        action="request",
        path=path,
        pool=request.pool or request.to_pool,
        detail=f"Request #{request.id}: {old} -> {status}",
    )
    session.flush()
    return request


def covered(request: LicenseRequest, new: dict[str, int | None]) -> bool:
    """Does a license with limits ``new`` cover ``request``?"""
    before = _decode(request.limits_before)

    def rose(pool: str, by: int) -> bool:
        if new.get(pool) is None:
            return True
        return new[pool] >= (before.get(pool) or 0) + by

    if request.kind == "add":
        return rose(request.pool, request.seats)
    old_from = before.get(request.from_pool)
    fell = (
        old_from is not None
        and new.get(request.from_pool) is not None
        and (new[request.from_pool] <= old_from - request.seats)
    )
    return fell and rose(request.to_pool, request.seats)


def fulfil(session, new: dict[str, int | None], *, now: datetime) -> list[int]:
    """Mark open requests that a newly installed license covers as fulfilled."""
    done = []
    for request in session.scalars(
        select(LicenseRequest).where(LicenseRequest.status.in_(OPEN_REQUEST_STATUSES))
    ):
        if covered(request, new):
            request.status = "fulfilled"
            request.updated_at = now
            done.append(request.id)
    return done

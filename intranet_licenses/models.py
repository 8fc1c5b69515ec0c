"""The extension's own tables, all prefixed ``licenses_``, beside the host's user table."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Pools a seat is taken from (DESIGN.md "Words").
POOLS = ("intranet", "extranet", "readonly")
#: The Primary Area's name on the command line and in CSV files.
PRIMARY_AREA = "primary"

#: Why a profile is blocked.
BLOCKED_BY_ADMIN = "admin"
AWAITING_LICENSE = "license"
BLOCKED_BY_DIRECTORY = "directory"
BLOCK_REASONS = (BLOCKED_BY_ADMIN, AWAITING_LICENSE, BLOCKED_BY_DIRECTORY)

#: How a profile came to be.
SOURCES = ("single", "csv", "directory", "sso", "host")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class Base(DeclarativeBase):
    """Declarative base with the extension's own metadata (not the host's)."""

    metadata = metadata


class Profile(Base):
    """The license side of one row of the host's user table, keyed by the host's user id.

    The host's table stays the source of truth for who exists, their names and whether
    they are active. This row holds what licensing adds: the area and pool, the seat the
    person holds right now, why they are blocked, and where they came from. The ``*_key``
    columns are lower-cased copies kept for indexed, case-insensitive prefix search and
    for case-insensitive username matching; the seat service refreshes them on every flush.
    """

    __tablename__ = "licenses_profile"

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    area: Mapped[str] = mapped_column(String(64), default=PRIMARY_AREA)
    readonly: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The pool the person belongs to (derived from area and readonly).
    pool: Mapped[str] = mapped_column(String(16))
    #: The pool whose seat the person holds now; NULL when blocked or exempt.
    seat_pool: Mapped[str | None] = mapped_column(String(16))
    #: The built-in administrator account never takes a seat.
    exempt: Mapped[bool] = mapped_column(Boolean, default=False)
    block_reason: Mapped[str | None] = mapped_column(String(16))
    #: When the person started waiting for a license (oldest first is activated first).
    waiting_since: Mapped[datetime | None] = mapped_column(DateTime)
    source: Mapped[str] = mapped_column(String(16), default="host")
    #: The directory's stable id (objectGUID or entryUUID) for directory profiles.
    directory_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    username_key: Mapped[str] = mapped_column(String(255), unique=True)
    first_name_key: Mapped[str] = mapped_column(String(255), default="")
    surname_key: Mapped[str] = mapped_column(String(255), default="")
    email_key: Mapped[str] = mapped_column(String(255), default="")

    __table_args__ = (
        Index("ix_licenses_profile_first_name_key", "first_name_key"),
        Index("ix_licenses_profile_surname_key", "surname_key"),
        Index("ix_licenses_profile_email_key", "email_key"),
        Index("ix_licenses_profile_block_reason", "block_reason", "waiting_since"),
        # Counting the people waiting per pool from the index alone (0004_perf).
        Index("ix_licenses_profile_waiting", "block_reason", "pool"),
        Index("ix_licenses_profile_area", "area", "user_id"),
        Index("ix_licenses_profile_pool", "pool", "user_id"),
    )


class SeatCounter(Base):
    """Seats in use per pool: read in constant time, and the row admissions lock."""

    __tablename__ = "licenses_seat_counter"

    pool: Mapped[str] = mapped_column(String(16), primary_key=True)
    used: Mapped[int] = mapped_column(Integer, default=0)


class WaitingCount(Base):
    """People awaiting a license (``block_reason`` 'license') per pool: the sum of the
    pool's rows, kept by database triggers on ``licenses_profile`` (migration
    ``0006_waiting_counts``), so that every writer keeps it right; the seat service reads it.

    ``tx`` 0 holds a pool's folded count. On PostgreSQL each transaction that changes who
    waits writes its change to rows of its own (``tx`` is its transaction id), so it never
    waits for another transaction, nor makes one wait, over the count (the counter row is
    what admissions lock); ``seats.fold_waiting`` adds those rows into ``tx`` 0. SQLite has
    one writer at a time: its triggers change ``tx`` 0 directly.
    """

    __tablename__ = "licenses_waiting_count"

    pool: Mapped[str] = mapped_column(String(16), primary_key=True)
    tx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    waiting: Mapped[int] = mapped_column(Integer, default=0)


class InstalledLicense(Base):
    """Every license ever installed; the newest row is the one in force."""

    __tablename__ = "licenses_installed"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    installed_at: Mapped[datetime] = mapped_column(DateTime)
    installed_by: Mapped[str] = mapped_column(String(255))


class AuditEvent(Base):
    """One seat action: who, when, which path, what, and how it ended (rule 11)."""

    __tablename__ = "licenses_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    actor: Mapped[str] = mapped_column(String(255))
    #: add, block, unblock, delete, move, activate, install, import, sync, setting, ...
    action: Mapped[str] = mapped_column(String(32))
    #: single, csv, directory, sso, host, cli, page, ...
    path: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str | None] = mapped_column(String(255))
    pool: Mapped[str | None] = mapped_column(String(16))
    #: ok, refused, error
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")


class Setting(Base):
    """Small named values a sysadmin changes at run time (for example the Responsible person)."""

    __tablename__ = "licenses_setting"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def utcnow() -> datetime:
    """Now in UTC, naive, as every ``*_at`` column stores it."""
    return datetime.now(UTC).replace(tzinfo=None)


class Episode(Base):
    """One row per pool: is the pool in an "exceeded" episode now (rule 6)?

    An episode is opened by a conditional UPDATE (``... WHERE open = false``) in the
    transaction of the event that exceeded the pool, so of several processes only one opens
    it and only that one writes the email; it is closed when the pool has a free seat again.
    """

    __tablename__ = "licenses_episode"

    pool: Mapped[str] = mapped_column(String(16), primary_key=True)
    open: Mapped[bool] = mapped_column(Boolean, default=False)
    opened_at: Mapped[datetime | None] = mapped_column(DateTime)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime)


class OutboxMessage(Base):
    """An email written in the transaction of its event and sent after the commit.

    ``sent_at`` is NULL until the mail server accepted it. A sender claims a row by setting
    ``claimed_by``/``claimed_until`` with a conditional UPDATE; a failed attempt leaves
    ``last_error`` and a later ``next_attempt_at`` (back-off).
    """

    __tablename__ = "licenses_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: exceeded, request, ...
    kind: Mapped[str] = mapped_column(String(32))
    recipient: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(255))
    text: Mapped[str] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime)
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (Index("ix_licenses_outbox_pending", "sent_at", "next_attempt_at"),)


#: What a license request can be in: sent to the vendor, acknowledged by them, covered by an
#: installed license, or withdrawn.
REQUEST_STATUSES = ("sent", "acknowledged", "fulfilled", "cancelled")
OPEN_REQUEST_STATUSES = ("sent", "acknowledged")


class LicenseRequest(Base):
    """A request to the vendor for more seats in a pool, or to move seats between pools."""

    __tablename__ = "licenses_request"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: add or move
    kind: Mapped[str] = mapped_column(String(8))
    seats: Mapped[int] = mapped_column(Integer)
    #: The pool to add to (kind add), else NULL.
    pool: Mapped[str | None] = mapped_column(String(16))
    from_pool: Mapped[str | None] = mapped_column(String(16))
    to_pool: Mapped[str | None] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text, default="")
    requester_name: Mapped[str] = mapped_column(String(255))
    requester_email: Mapped[str] = mapped_column(String(320), default="")
    status: Mapped[str] = mapped_column(String(16), default="sent")
    #: The license's limits when the request was made, "pool=limit" pairs ("" = Unlimited),
    #: so a later install can tell whether it covers the request.
    limits_before: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    created_by: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[datetime | None] = mapped_column(DateTime)
    #: One per form shown: a second submission of the same form finds the first request.
    submission_key: Mapped[str | None] = mapped_column(String(64), unique=True)

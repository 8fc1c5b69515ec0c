"""The seat service: the one place that admits, blocks, unblocks, deletes and moves people.

How seats are counted
---------------------
``licenses_seat_counter`` holds one row per pool with the seats in use. Every change of
who holds a seat goes through :func:`_reconcile`, a ``before_flush`` listener on every
SQLAlchemy session: it compares, for each host user in the flush, the seat the person
holds now (``Profile.seat_pool``) with the seat they should hold after the flush (their
pool if active and not the administrator account), and moves the counters by the
difference *before* any row is written.

Why this is safe against races
------------------------------
A seat is taken with one conditional statement,
``UPDATE licenses_seat_counter SET used = used + n WHERE pool = :p AND used + n <= :limit``.
The database evaluates the condition and the increment atomically: on PostgreSQL the row
lock makes a second writer wait for the first to commit and then re-check the condition
against the committed value (READ COMMITTED re-evaluates the WHERE clause); on SQLite the
statement takes the database's single write lock, so writers run one after another. A
statement that matched no row is a refusal, not a database error. Counters are touched
in pool-name order, so two transactions never wait on each other's rows in a cycle. The
lock is held until the transaction ends, so the seat and the profile row it belongs to
are committed or rolled back together.

Before that UPDATE one plain SELECT reads, in one statement, the counters of the pools the
flush wants seats in, their exceeded-episode rows and the license in force (its text,
verified and parsed once per process). A pool that this reading finds full is refused at
once, without taking the counter's lock, so refusals at a full pool do not queue behind
admissions. The reading only ever refuses: a seat is granted by the conditional UPDATE
alone, which re-checks the limit against the committed count, so a stale reading can
cost a refusal that a moment later would have been an admission (as any earlier refusal
would), never an extra seat. The limit the UPDATE checks comes from the same reading: a
license installed after it applies from the next attempt on, as before (the license was
always read before the UPDATE, in a statement of its own).

:func:`add_person` takes that reading itself, in the statement that checks the username,
and hands it to its flush. When the reading finds the pool full it refuses without
flushing (the session was flushed just before, so the new person is all the flush would
have written; same check, same reading). Otherwise it writes the admission's audit row and
flushes, so that the counter's lock is held only for the person's two rows and the COMMIT;
should the UPDATE refuse after all, that row is withdrawn in the same transaction.

Because the listener sees every flush, host code that writes the user model through the
ORM is held to the same rule (the "safety net"); raw SQL is not seen (see the README).

Many people at once (:func:`add_many` for CSV, :func:`admit_or_wait` for a directory sync)
go through the same listener: one flush per batch, so one conditional UPDATE per pool per
batch. :func:`admit_or_wait` reads a pool's free seats, marks that many of the batch active
and the rest awaiting a license, and flushes; the read only decides how many to *ask* for.
If another transaction took seats in between, the conditional UPDATE matches no row, the
listener refuses before any row is written, and the batch is asked again with the smaller
free count (a loop that ends: each refusal means the committed count rose, and asking for
no seat is never refused).
"""

from __future__ import annotations

import functools
import unicodedata
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from email_validator import EmailNotValidError, validate_email
from flask import current_app, has_app_context
from sqlalchemy import (
    Integer,
    and_,
    bindparam,
    case,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy import delete as sa_delete
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session, scoped_session

from . import audit, licensing, notifications
from .errors import LicensesError
from .extension import adapter, config, logger
from .models import (
    AWAITING_LICENSE,
    BLOCK_REASONS,
    BLOCKED_BY_ADMIN,
    POOLS,
    PRIMARY_AREA,
    Episode,
    Profile,
    SeatCounter,
    WaitingCount,
    utcnow,
)

_counters = SeatCounter.__table__
_waiting = WaitingCount.__table__
#: Read (never written) here: a refusal reports whether its pool's episode is open already.
_episodes = Episode.__table__


# Errors ---------------------------------------------------------------------------------


class SeatError(LicensesError):
    """A seat action that was refused. ``str(error)`` is a sentence for a person."""


class PersonError(SeatError):
    """The action cannot be done to this person (unknown, duplicate, administrator, ...)."""


class SeatLimitExceeded(SeatError):
    """No free seat in ``pool``: carries the pool, its limit and its usage."""

    def __init__(
        self,
        pool: str,
        limit: int | None,
        used: int,
        needed: int = 1,
        why=None,
        episode_open: bool | None = None,
    ):
        self.pool = pool
        self.limit = limit
        self.used = used
        self.needed = needed
        #: The license status sentence when the license is not valid, else None.
        self.license_problem = why
        #: Whether the pool's exceeded episode was open in the very statement that found the
        #: pool full (None when not read with it); see notifications.exceeded.
        self.episode_open = episode_open
        super().__init__(self._sentence())

    def _sentence(self) -> str:
        if self.license_problem:
            return (
                f"Nobody new can be admitted to the {self.pool} pool: {self.license_problem} "
                "Install a valid license on the License page, or request one."
            )
        wanted = "a seat" if self.needed == 1 else f"{self.needed} seats"
        return (
            f"No free seat in the {self.pool} pool: {self.used} of {self.limit} seats are in "
            f"use and this needs {wanted}. Request more licenses, or block or delete people "
            "who no longer need access."
        )

    @property
    def shortfall(self) -> int:
        """How many more seats the pool would need for this action."""
        if self.limit is None:
            return 0
        return max(self.needed - max(self.limit - self.used, 0), 1)


# Pools, areas and figures ---------------------------------------------------------------


def pool_for(area: str, readonly: bool) -> str:
    """The pool a profile in ``area`` draws its seat from."""
    if readonly:
        return "readonly"
    return "intranet" if area == PRIMARY_AREA else "extranet"


def areas() -> list[str]:
    """Every area: the Primary Area, then the configured extranet areas."""
    return [PRIMARY_AREA, *config("EXTRANET_AREAS")]


def check_area(area: str | None) -> str:
    """The area's canonical name, or PersonError naming the areas that exist."""
    wanted = (area or PRIMARY_AREA).strip()
    for name in areas():
        if name.lower() == wanted.lower():
            return name
    raise PersonError(f"Unknown area '{wanted}'. Areas are: {', '.join(areas())}.")


def usage(session) -> dict[str, int]:
    """Seats in use per pool, from the counters (constant time)."""
    rows = session.execute(select(SeatCounter.pool, SeatCounter.used)).all()
    found = {pool: used for pool, used in rows}
    return {pool: found.get(pool, 0) for pool in POOLS}


def waiting(session) -> dict[str, int]:
    """People awaiting a license, per pool, from ``licenses_waiting_count`` (a few rows)."""
    rows = session.execute(
        select(_waiting.c.pool, func.sum(_waiting.c.waiting)).group_by(_waiting.c.pool)
    ).all()
    found = dict(rows)
    return {pool: found.get(pool) or 0 for pool in POOLS}


def _waiting_column(pool: str):
    return select(func.coalesce(func.sum(_waiting.c.waiting), 0)).where(_waiting.c.pool == pool)


def fold_waiting(session, *, skip_locked: bool = False) -> None:
    """Add the waiting-count rows that transactions wrote (PostgreSQL) into each pool's
    ``tx`` 0 row (see ``models.WaitingCount``): a pool's rows stay few.

    The ``tx`` 0 rows are locked first, in pool order, so two folds take turns (with
    ``skip_locked``, a pool whose row another fold holds is left for later: no wait at
    all); a row of a transaction still running is not visible, and stays for the next
    fold. Without ``skip_locked``, call it at the end of a transaction, when it holds no
    lock another transaction might wait on it for.
    """
    conn = session.connection()
    base = _waiting.c.tx == 0
    held = (
        conn.execute(
            select(_waiting.c.pool)
            .where(base)
            .order_by(_waiting.c.pool)
            .with_for_update(skip_locked=skip_locked)
        )
        .scalars()
        .all()
    )
    folded: Counter[str] = Counter()
    for pool, change in conn.execute(
        sa_delete(_waiting)
        .where(_waiting.c.tx != 0, _waiting.c.pool.in_(held))
        .returning(_waiting.c.pool, _waiting.c.waiting)
    ):
        folded[pool] += change
    for pool in sorted(folded):
        conn.execute(
            update(_waiting)
            .where(base, _waiting.c.pool == pool)
            .values(waiting=_waiting.c.waiting + folded[pool])
        )


@dataclass(frozen=True)
class PoolFigures:
    """One pool's line on the License and People pages."""

    pool: str
    used: int
    limit: int | None
    waiting: int

    @property
    def free(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.used, 0)

    @property
    def over(self) -> bool:
        return self.limit is not None and self.used > self.limit


# Keyed by ``also``, a tuple its callers build once: the License page's, a search's count,
# and the People page's page of people for each shape of filters and direction (72).
@functools.lru_cache(maxsize=256)
def _figures_statements(also: tuple = ()):
    """Two selects: the license in force, the license state last seen
    (``notifications.notice_license_state``) and the columns ``also``, in one row; and the
    same with one row per pool, its counter and waiting count besides.

    The pools are rows of the counter table, not a subquery per pool: PostgreSQL plans the
    statement on every execution (psycopg prepares a statement after five executions, but
    forgets at every ROLLBACK, which ends every request that wrote nothing), and planning
    six subqueries took longer than running them (server CPU at 1,000,000 profiles: 0.17
    ms, now 0.09; with the License page's columns 0.26, now 0.18). The one-row select
    serves a database without counter rows.
    """
    seen = notifications.license_state_seen()
    alone = select(*licensing.current_columns(), seen, *also)
    waiting = select(func.coalesce(func.sum(_waiting.c.waiting), 0)).where(
        _waiting.c.pool == _counters.c.pool
    )
    per_pool = alone.add_columns(
        _counters.c.pool, _counters.c.used, waiting.scalar_subquery().label("waiting")
    ).select_from(_counters)
    return alone, per_pool


class Reading(NamedTuple):
    """What a page shows of the seats, read in one statement (``license_and_figures``)."""

    current: licensing.Current
    figures: list[PoolFigures]
    #: The license state last seen, for ``notifications.notice_license_state``.
    license_state_seen: str | None
    #: The row read: the columns asked for with ``also``, by their labels.
    row: Mapping


def figures(session, now: datetime) -> list[PoolFigures]:
    """Used, limit, free and waiting for every pool, in one statement (the counter rows
    and the license in force)."""
    return license_and_figures(session, now).figures


def license_and_figures(
    session, now: datetime, also: tuple = (), params=None, *, conn=None
) -> Reading:
    """The license in force, the figures and the license state last seen, in one statement;
    with ``also``, a tuple of labelled columns a page needs besides (built once: it is part
    of the cache key of the statement) and ``params``, the values of their bound
    parameters (an uncorrelated column is computed once, though repeated on every row).
    Read on ``conn`` if given (a page's, ``reads.connection``), else on the session's."""
    alone, per_pool = _figures_statements(also)
    conn = conn if conn is not None else session.connection()
    rows = conn.execute(per_pool, params or {}).all()
    used = {r.pool: r.used for r in rows}
    waiting = {r.pool: r.waiting for r in rows}
    if not rows:  # no counter rows (a broken schema): every pool reads 0
        rows = conn.execute(alone, params or {}).all()
    row = rows[0]._mapping
    current = licensing.current_from(row, now.date())
    limit = licensing.limits_of(current.status)
    pools = [PoolFigures(p, used.get(p, 0), limit[p], waiting.get(p, 0)) for p in POOLS]
    return Reading(current, pools, row["seen"], row)


def summary_sentence(figures: list[PoolFigures]) -> str:
    """'Number of Users 58 (53 in intranet area), excluding the administrator account'."""
    total = sum(f.used for f in figures)
    intranet = next(f.used for f in figures if f.pool == "intranet")
    return (
        f"Number of Users {total} ({intranet} in intranet area), "
        "excluding the administrator account"
    )


# The counters ---------------------------------------------------------------------------


# The statements of every admission are built once (building one costs more CPU than
# running it from SQLAlchemy's compiled cache); the values are bound per call.
_ADD = update(_counters).where(_counters.c.pool == bindparam("seat_pool"))
_ADD = _ADD.values(used=_counters.c.used + bindparam("delta", type_=Integer))
_TAKE = _ADD.where(
    _counters.c.used + bindparam("delta", type_=Integer) <= bindparam("seat_limit", type_=Integer)
)


def _take(conn, pool: str, n: int, limit: int | None) -> bool:
    """Take ``n`` seats in ``pool`` if they are free; True when taken. See module docstring."""
    if limit is None:
        return conn.execute(_ADD, {"seat_pool": pool, "delta": n}).rowcount == 1
    return conn.execute(_TAKE, {"seat_pool": pool, "delta": n, "seat_limit": limit}).rowcount == 1


def _adjust(conn, pool: str, n: int) -> None:
    conn.execute(
        update(_counters).where(_counters.c.pool == pool).values(used=_counters.c.used + n)
    )


def _used(conn, pool: str) -> int:
    return conn.execute(select(_counters.c.used).where(_counters.c.pool == pool)).scalar_one()


@dataclass(frozen=True)
class _PoolReading:
    """One pool as one statement saw it: seats in use, and whether its episode was open."""

    used: int
    episode_open: bool | None


_READ_ALL = select(
    _counters.c.pool,
    _counters.c.used,
    _episodes.c.open,
    *licensing.current_columns(),
).select_from(_counters.outerjoin(_episodes, _episodes.c.pool == _counters.c.pool))
_READ_POOLS = _READ_ALL.where(_counters.c.pool.in_(bindparam("pools", expanding=True)))
#: One pool, and whether a username key is taken (add_person's first statement).
_READ_POOL_AND_USERNAME = _READ_ALL.where(_counters.c.pool == bindparam("pool")).add_columns(
    select(Profile.__table__.c.user_id)
    .where(Profile.__table__.c.username_key == bindparam("key"))
    .scalar_subquery()
    .label("taken")
)
#: session.info: add_person's reading, for the flush that follows it (see _move_counters).
_READING = "licenses_reading"


@dataclass(frozen=True)
class _PoolsRead:
    """What one statement read: for these pools, their counters and episodes; the license."""

    pools: tuple[str, ...]
    readings: dict[str, _PoolReading]
    current: licensing.Current


def _refusal_by_reading(session, read: _PoolsRead, pool: str, needed: int):
    """The refusal when ``read`` finds ``pool`` without ``needed`` free seats, else None."""
    status = read.current.status
    limit = licensing.limits_of(status)[pool]
    reading = read.readings.get(pool)
    if limit is None or reading is None or reading.used + needed <= limit:
        return None
    refusal = SeatLimitExceeded(
        pool,
        limit,
        reading.used,
        needed=needed,
        why=None if status.valid else status.sentence,
        episode_open=reading.episode_open,
    )
    session.info["licenses_refusal"] = refusal  # for last_refusal()
    return refusal


def _read_pools(session, conn, pools: list[str], today, *, username_key=None):
    """The pools' counters, their episodes and the license in force, in one statement.

    One round trip instead of three: the license row comes with the counters (its text is
    verified and parsed once per process, see ``licensing.latest``), and the episode
    flag tells a refusal whether the Responsible person has been told already. With
    ``username_key`` it also says who has that username key: returns (read, user id or
    None, or ``...`` when it could not be read).
    """
    if username_key is None:
        rows = conn.execute(_READ_POOLS, {"pools": pools}).all()
    else:
        (pool,) = pools
        rows = conn.execute(_READ_POOL_AND_USERNAME, {"pool": pool, "key": username_key}).all()
    if not rows:  # no counter rows (a broken schema): the license alone; _take refuses
        read = _PoolsRead(tuple(pools), {}, licensing.current(session, today))
        return read, ...
    readings = {row.pool: _PoolReading(row.used, row.open) for row in rows}
    current = licensing.current_from(rows[0]._mapping, today)
    return _PoolsRead(tuple(pools), readings, current), rows[0].taken if username_key else ...


# The safety net: every flush of the host's users is reconciled with the counters -------


@dataclass
class _Change:
    user: object
    profile: Profile | None
    held: str | None
    want: str | None


def install_safety_net() -> None:
    """Listen to every SQLAlchemy session (once per process)."""
    if not event.contains(Session, "before_flush", _reconcile):
        event.listen(Session, "before_flush", _reconcile)
        event.listen(Session, "after_flush", _insert_new_profiles)
        event.listen(Session, "after_flush", _note_waiting_changes)
        event.listen(Session, "before_commit", _fold_before_commit)


#: session.info: this transaction changed who waits for a license (see _fold_before_commit).
_WAITING_CHANGED = "licenses_waiting_changed"


def _note_waiting_changes(session, flush_context) -> None:
    """after_flush: note a flush that made a person start or stop waiting, or moved one."""
    if session.info.get(_WAITING_CHANGED):
        return
    for obj in (*session.dirty, *session.deleted):
        if not isinstance(obj, Profile):
            continue
        state = inspect(obj)
        reasons = state.attrs.block_reason.history
        waits = obj.block_reason == AWAITING_LICENSE
        if (
            AWAITING_LICENSE in (*reasons.added, *reasons.deleted)
            or (waits and obj in session.deleted)
            or (waits and state.attrs.pool.history.has_changes())
        ):
            session.info[_WAITING_CHANGED] = True
            return


def _fold_before_commit(session) -> None:
    """before_commit: a transaction that changed who waits folds the waiting-count rows of
    the transactions before it (PostgreSQL), so that a pool's rows stay few without a sync
    or a recount. It skips a pool whose folded row another fold holds, so it never waits."""
    if not session.info.pop(_WAITING_CHANGED, False) or not session.in_transaction():
        return
    if session.connection().dialect.name == "postgresql":
        session.flush()  # the transaction's own writes first: the fold is its last statement
        fold_waiting(session, skip_locked=True)


def _key(value) -> str:
    """A lower-cased search key in Unicode normal form C (so 'é' and 'e' + U+0301 are one
    username); cut to the column's 255 characters (some letters grow)."""
    text = unicodedata.normalize("NFC", (value or "").strip())
    return unicodedata.normalize("NFC", text.lower())[:255]


def _identity_changed(ad, user) -> bool:
    state = inspect(user)
    names = [ad.username_attr, ad.first_name_attr, ad.surname_attr, ad.email_attr]
    return any(state.attrs[name].history.has_changes() for name in names)


def _refresh_keys(ad, user, profile: Profile) -> None:
    profile.username_key = _key(ad.get(user, "username"))
    profile.first_name_key = _key(ad.get(user, "first_name"))
    profile.surname_key = _key(ad.get(user, "surname"))
    profile.email_key = _key(ad.get(user, "email"))


def _new_profile_values(ad, user, now: datetime) -> dict:
    """Values for a new user's profile: what a service asked for, else host defaults."""
    spec = dict(inspect(user).info.get("licenses_profile", {}))
    area = spec.get("area", PRIMARY_AREA)
    readonly = spec.get("readonly", False)
    username_key = _key(ad.get(user, "username"))
    exempt = username_key == _key(config("ADMIN_USERNAME"))
    active = _is_active(ad, user)
    reason = spec.get("block_reason") or (None if active else BLOCKED_BY_ADMIN)
    return {
        "area": area,
        "readonly": readonly,
        "pool": pool_for(area, readonly),
        "exempt": exempt,
        "block_reason": None if active else reason,
        "waiting_since": spec.get("waiting_since") if reason == AWAITING_LICENSE else None,
        "source": spec.get("source", "host"),
        "directory_id": spec.get("directory_id"),
        "created_at": spec.get("created_at") or now,
        "username_key": username_key,
        "first_name_key": _key(ad.get(user, "first_name")),
        "surname_key": _key(ad.get(user, "surname")),
        "email_key": _key(ad.get(user, "email")),
    }


def _schema_ready(session) -> bool:
    """True once ``flask licenses upgrade`` has created the tables (checked until it has)."""
    state = current_app.extensions["licenses"]
    if not state.schema_ready:
        state.schema_ready = sa_inspect(session.connection()).has_table(_counters.name)
        if not state.schema_ready:
            logger.warning("intranet-licenses has no tables yet: run 'flask licenses upgrade'.")
    return state.schema_ready


def _is_active(ad, user) -> bool:
    """The user's active flag, with the column default applied to a new, unset one."""
    value = ad.get(user, "active")
    if value is None:
        default = ad.column("active").default
        value = bool(default.arg) if default is not None and default.is_scalar else False
        ad.set(user, "active", value)
    return bool(value)


def last_refusal(session) -> SeatLimitExceeded | None:
    """The refusal that stopped this session's latest flush, or None if it was not refused.

    For host code that catches exceptions itself (Flask-AppBuilder's ``add_user`` logs,
    rolls back and returns False): afterwards this still says why. A rollback keeps it;
    the next flush clears it.
    """
    return session.info.get("licenses_refusal")


def _reconcile(session, flush_context, instances) -> None:
    """before_flush: move the seat counters for every host user whose seat changes."""
    session.info.pop("licenses_new_profiles", None)
    session.info.pop("licenses_refusal", None)
    reading = session.info.pop(_READING, None)
    if not has_app_context() or "licenses" not in current_app.extensions:
        return
    if not _schema_ready(session):
        return
    ad = adapter()
    model = ad.model
    now = session.info.get("licenses_now") or utcnow()
    changes: list[_Change] = []
    new_profiles = []
    with session.no_autoflush:
        for user in session.new:
            if isinstance(user, model):
                values = _new_profile_values(ad, user, now)
                want = None if values["exempt"] or values["block_reason"] else values["pool"]
                values["seat_pool"] = want
                new_profiles.append((user, values))
                changes.append(_Change(user, None, None, want))

        touched: dict[int, tuple[object, Profile | None]] = {}
        for obj in session.dirty:
            if isinstance(obj, model) and (
                inspect(obj).attrs[ad.active_attr].history.has_changes()
                or _identity_changed(ad, obj)
            ):
                touched[ad.get(obj, "id")] = (obj, None)
            elif isinstance(obj, Profile) and session.is_modified(obj):
                touched.setdefault(obj.user_id, (None, obj))
        for user_id, (user, profile) in touched.items():
            user = user if user is not None else session.get(model, user_id)
            profile = profile if profile is not None else session.get(Profile, user_id)
            if user is None:
                continue
            if profile is None:  # a user from before the extension: adopt it
                profile = Profile(user_id=user_id, **_new_profile_values(ad, user, now))
                profile.seat_pool = None
                session.add(profile)
            _refresh_keys(ad, user, profile)
            # Exactly the account named LICENSES_ADMIN_USERNAME is exempt, also after renames.
            profile.exempt = profile.username_key == _key(config("ADMIN_USERNAME"))
            active = bool(ad.get(user, "active"))
            profile.pool = pool_for(profile.area, profile.readonly)
            want = profile.pool if active and not profile.exempt else None
            changes.append(_Change(user, profile, profile.seat_pool, want))

        for user in session.deleted:
            if isinstance(user, model):
                profile = session.get(Profile, ad.get(user, "id"))
                if profile is not None:
                    changes.append(_Change(user, profile, profile.seat_pool, None))
                    session.delete(profile)

    _read_held_seats(session, changes)
    if not session.info.get("licenses_recounting"):
        _move_counters(session, changes, now, reading)

    # All seats were granted: record what each profile holds now.
    for change in changes:
        if change.profile is not None and change.profile not in session.deleted:
            profile = change.profile
            profile.seat_pool = change.want
            if bool(ad.get(change.user, "active")):
                profile.block_reason = None
                profile.waiting_since = None
            elif profile.block_reason not in BLOCK_REASONS:
                profile.block_reason = BLOCKED_BY_ADMIN
        _record_host_change(session, change, now)
    session.info["licenses_new_profiles"] = new_profiles


def _read_held_seats(session, changes: list[_Change]) -> None:
    """Lock the profiles this flush changes and read the seat each one holds now.

    Two requests may act on the same person at once (a double click on Block, two
    administrators moving someone). Each loaded the profile before the other committed, so
    the seat it remembers may be gone already. Touching the rows first takes their locks
    (PostgreSQL row locks; SQLite's write lock), so the read that follows sees the other
    request's committed change and the counters move by the real difference only. A
    profile whose row is gone was deleted by the other request, which freed its seat: this
    flush is refused (PersonError), so the seat is not freed a second time.
    """
    ids = [
        change.profile.user_id
        for change in changes
        if change.profile is not None and inspect(change.profile).persistent
    ]
    if not ids:
        return
    table = Profile.__table__
    conn = session.connection()
    conn.execute(update(table).where(table.c.user_id.in_(ids)).values(seat_pool=table.c.seat_pool))
    rows = conn.execute(select(table.c.user_id, table.c.seat_pool).where(table.c.user_id.in_(ids)))
    held = {user_id: seat_pool for user_id, seat_pool in rows}
    for change in changes:
        if change.profile is None or change.profile.user_id not in ids:
            continue
        if change.profile.user_id not in held:
            # Both rows are gone: forget them, so the caller's commit writes nothing of them.
            for gone in (change.profile, change.user):
                if gone in session:
                    session.expunge(gone)
            raise PersonError(
                f"{adapter().get(change.user, 'username')} no longer exists: someone deleted "
                "them a moment ago. Nothing was changed."
            )
        change.held = held[change.profile.user_id]


def _move_counters(session, changes: list[_Change], now: datetime, read=None) -> None:
    """Apply the net seat change per pool, in pool order; refuse and undo on a full pool.

    ``read`` is what add_person read, in this transaction, just before this flush (with its
    username check): used instead of reading again when it covers exactly these pools.
    """
    deltas: Counter[str] = Counter()
    for change in changes:
        if change.held != change.want:
            if change.held:
                deltas[change.held] -= 1
            if change.want:
                deltas[change.want] += 1
    if not any(deltas.values()):
        return
    conn = session.connection()
    wanted = sorted(pool for pool, delta in deltas.items() if delta > 0)
    limits: dict[str, int | None] = {}
    current = None
    if wanted:
        if read is None or read.pools != tuple(wanted):
            read, _ = _read_pools(session, conn, wanted, now.date())
        current = read.current
        limits = licensing.limits_of(current.status)

    def refuse(pool: str, used: int):
        why = None if current.status.valid else current.status.sentence
        refusal = SeatLimitExceeded(pool, limits[pool], used, needed=deltas[pool], why=why)
        session.info["licenses_refusal"] = refusal  # for last_refusal()
        return refusal

    # A pool that is already full by its committed count is refused without taking the
    # counter's lock, so refusals at a full pool do not queue behind admissions. Seats are
    # only ever granted by the conditional UPDATE below.
    if not any(d < 0 for d in deltas.values()):  # a release may make room: then the UPDATE
        for pool in wanted:
            refusal = _refusal_by_reading(session, read, pool, deltas[pool])
            if refusal is not None:
                raise refusal
    applied: list[tuple[str, int]] = []
    for pool in sorted(deltas):
        delta = deltas[pool]
        if delta > 0 and not _take(conn, pool, delta, limits[pool]):
            for done_pool, done in applied:
                _adjust(conn, done_pool, -done)
            raise refuse(pool, _used(conn, pool))
        if delta < 0:
            _adjust(conn, pool, delta)
            notifications.seats_freed(session, [pool], now)
        if delta:
            applied.append((pool, delta))


def _record_host_change(session, change: _Change, now: datetime) -> None:
    """Audit a seat change made by host code (service calls record their own)."""
    info = inspect(change.user).info
    if info.get("licenses_path") or change.held == change.want:
        return
    ad = adapter()
    if change.user in session.deleted:
        action = "delete"
    elif change.held is None and change.profile is None:
        action = "add"
    else:
        action = "unblock" if change.want else "block"
    audit.record(
        session,
        at=now,
        actor="host",
        action=action,
        path="host",
        subject=ad.get(change.user, "username"),
        pool=change.want or change.held,
    )


def _insert_new_profiles(session, flush_context) -> None:
    """after_flush: write the profile rows of users inserted by this flush (ids now known)."""
    new_profiles = session.info.pop("licenses_new_profiles", None)
    if not new_profiles:
        return
    ad = adapter()
    rows = [{"user_id": ad.get(user, "id"), **values} for user, values in new_profiles]
    session.connection().execute(_INSERT_PROFILES, rows)


_INSERT_PROFILES = insert(Profile.__table__)


# The service ---------------------------------------------------------------------------


def _flush(session, now: datetime) -> None:
    """Flush with the service's clock, so the license is judged as of ``now``."""
    session.info["licenses_now"] = now
    try:
        session.flush()
    finally:
        session.info.pop("licenses_now", None)
        session.info.pop(_READING, None)  # add_person's reading serves one flush at most


def profile_of(session, user) -> Profile:
    """The profile of a host user (creating it for a user from before the extension)."""
    profile = session.get(Profile, adapter().get(user, "id"))
    if profile is None:
        raise PersonError(
            "This person has no license profile yet; run 'flask licenses recount' first."
        )
    return profile


def find_person(session, username: str):
    """The host user with this username (case-insensitive), or PersonError."""
    ad = adapter()
    user_id = session.execute(
        select(Profile.user_id).where(Profile.username_key == _key(username))
    ).scalar()
    user = session.get(ad.model, user_id) if user_id is not None else None
    if user is None:
        raise PersonError(f"Nobody has the username '{username}'.")
    return user


def _locked_profile(session, user) -> Profile:
    """Lock the person's profile row, then re-read the person and the profile as committed.

    Two requests may act on one person at once (a double click, two administrators, a
    move racing an unblock). Each loaded the person before the other committed; deciding
    from that (is the person active? in which pool?) would move counters for a state that
    is gone, or write one request's area over the other's read-only flag. Touching the row
    first takes its lock (PostgreSQL: a row lock, the other waits for our commit; SQLite:
    the database's write lock), so what is read next is the other request's committed
    result. The profile row is locked before any counter, as every flush here locks them.
    """
    ad = adapter()
    if inspect(user).modified:
        session.flush()  # the caller's pending changes first, so the re-read below keeps them
    user_id = ad.get(user, "id")
    table = Profile.__table__
    touched = (
        session.connection()
        .execute(
            update(table).where(table.c.user_id == user_id).values(seat_pool=table.c.seat_pool)
        )
        .rowcount
    )
    if touched == 0:
        exists = session.execute(select(ad.column("id")).where(ad.column("id") == user_id))
        if exists.first() is None:
            username = ad.get(user, "username")
            session.expunge(user)
            raise PersonError(
                f"{username} no longer exists: someone deleted them a moment ago. "
                "Nothing was changed."
            )
        return profile_of(session, user)  # says to run recount first
    session.refresh(user)
    return session.get(Profile, user_id, populate_existing=True)


def get_person(session, user_id: int):
    user = session.get(adapter().model, user_id) if 0 < user_id < 2**31 else None
    if user is None:
        raise PersonError(f"There is no person with ID {user_id}; they may have been deleted.")
    return user


def username_taken(session, username: str) -> str | None:
    """The existing username that equals ``username`` without regard to case, if any."""
    user_id = session.execute(_BY_USERNAME_KEY, {"key": _key(username)}).scalar()
    if user_id is None:
        return None
    return adapter().get(session.get(adapter().model, user_id), "username")


_BY_USERNAME_KEY = select(Profile.user_id).where(Profile.username_key == bindparam("key"))


def email_taken(session, email: str) -> bool:
    """True when someone already has this email address (compared without regard to case)."""
    found = session.execute(
        select(Profile.user_id).where(Profile.email_key == _key(email)).limit(1)
    ).scalar()
    return found is not None


#: Invisible characters a name may contain: the joiners that Persian, Indic scripts and
#: emoji sequences need. A username may contain no invisible character at all.
_NAME_JOINERS = frozenset("\u200c\u200d")


#: Names for the control characters people meet (Unicode gives control characters none).
_CONTROL_NAMES = {"\x00": "NUL", "\t": "TAB", "\n": "LINE FEED", "\r": "CARRIAGE RETURN"}


def character_name(ch: str) -> str:
    """'U+200B ZERO WIDTH SPACE', 'U+0000 NUL'; the code point alone if it has no name."""
    name = unicodedata.name(ch, "") or _CONTROL_NAMES.get(ch, "")
    return f"U+{ord(ch):04X} {name}".rstrip()


def shown(text: str) -> str:
    """Text for a message: at most 60 characters, each one that does not print as '?'."""
    return "".join(ch if ch.isprintable() else "?" for ch in text[:60])


def text_problem(label: str, value: str, *, username: bool = False) -> str | None:
    """Why ``value`` (already stripped) cannot be a person's ``label``, as a clause, or None.

    The one rule every path applies (page, CLI, CSV, directory, SSO): at most 255
    characters; no control character; in a username no space and nothing that does not
    print (format characters such as U+FEFF or U+200B make an account nobody can sign in
    to or find); in a name no invisible character except the joiners U+200C and U+200D.
    """
    if len(value) > 255:
        return f"the {label} is longer than 255 characters ({len(value)}); shorten it."
    if value.isascii() and value.isprintable():  # most names: no control, no invisible one
        if username and " " in value:
            return f"the {label} is not usable: use up to 255 characters, no spaces."
        return None
    for ch in value:
        category = unicodedata.category(ch)
        if category == "Cc":
            return (
                f"the {label} contains a control character ({character_name(ch)}); remove it "
                "and try again."
            )
        if username and ch.isspace():
            return f"the {label} is not usable: use up to 255 characters, no spaces."
        invisible = not ch.isprintable() and not ch.isspace()
        if invisible and (username or ch not in _NAME_JOINERS):
            return (
                f"the {label} contains {character_name(ch)}, an invisible character; "
                "type it again without it."
            )
    return None


def check_person_fields(username: str, first_name: str, surname: str, email: str) -> dict:
    """Clean and check a new person's fields; PersonError says what is wrong."""
    username = (username or "").strip()
    first_name = (first_name or "").strip()
    surname = (surname or "").strip()
    email = (email or "").strip()
    if not username:
        raise PersonError("A username is required.")
    name = shown(username)
    for label, value in (("username", username), ("first name", first_name),
                         ("surname", surname), ("email", email)):  # fmt: skip
        named = f"username '{name}'" if label == "username" else f"{label} of '{name}'"
        problem = text_problem(named, value, username=label == "username")
        if problem:
            raise PersonError(problem[0].upper() + problem[1:])
    if not first_name or not surname:
        raise PersonError(f"{username}: a first name and a surname are required.")
    if not email and has_app_context() and adapter().email_required:
        raise PersonError(f"{username}: an email address is required.")
    if email:
        try:
            email = validate_email(email, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise PersonError(
                f"{username}: '{email}' is not a valid email address ({exc})."
            ) from None
    return {"username": username, "first_name": first_name, "surname": surname, "email": email}


def _refused(session, refusal: SeatError, *, actor, action, path, subject, now) -> None:
    pool = getattr(refusal, "pool", None)
    if isinstance(refusal, SeatLimitExceeded):
        notifications.exceeded(
            session,
            pool=pool,
            trigger="refused",
            path=path,
            usernames=[subject],
            now=now,
            episode_open=refusal.episode_open,
        )
    audit.record(
        session,
        at=now,
        actor=actor,
        action=action,
        path=path,
        outcome="refused",
        subject=subject,
        pool=pool,
        detail=str(refusal),
    )


def _plain(session) -> Session:
    """The session itself when given a ``scoped_session`` (Flask-SQLAlchemy's ``db.session``):
    a call that uses it a dozen times pays the proxy's registry lookup once."""
    return session() if isinstance(session, scoped_session) else session


def add_person(
    session,
    *,
    username: str,
    first_name: str,
    surname: str,
    email: str,
    area: str = PRIMARY_AREA,
    readonly: bool = False,
    source: str = "single",
    path: str | None = None,
    actor: str,
    now: datetime,
    wait_when_full: bool = False,
    directory_id: str | None = None,
):
    """Create an active profile, or refuse with SeatLimitExceeded and change nothing.

    With ``wait_when_full`` (directory sync only, rule 3) a person who finds no free seat is
    created blocked, awaiting a license, instead.
    """
    session = _plain(session)
    ad = adapter()
    path = path or source
    fields = check_person_fields(username, first_name, surname, email)
    area = check_area(area)
    pool = pool_for(area, readonly)
    # One statement reads whether the username is taken and the pool's counter, episode and
    # license, for the flush below (it only ever refuses; the conditional UPDATE grants).
    if session.autoflush:
        session.flush()  # as the ORM's autoflush would before a query: pending people count
    read, taken = _read_pools(
        session, session.connection(), [pool], now.date(), username_key=_key(fields["username"])
    )
    if taken is ...:
        existing = username_taken(session, fields["username"])
    elif taken is not None:
        existing = ad.get(session.get(ad.model, taken), "username")
    else:
        existing = None
    if existing is not None:
        raise PersonError(
            f"A person with the username '{existing}' already exists "
            "(usernames are compared without regard to case)."
        )
    if ad.unique_email and fields["email"] and email_taken(session, fields["email"]):
        raise PersonError(
            f"{fields['username']}: another person already has the email address "
            f"{fields['email']}."
        )
    refusal = None
    if session.autoflush and _key(fields["username"]) != _key(config("ADMIN_USERNAME")):
        # The session was flushed just before the reading, so this person is all that the
        # flush would write: a pool that the reading finds full refuses them as the flush
        # would (the same check, the same reading), without building the user or the flush.
        refusal = _refusal_by_reading(session, read, pool, 1)
    if refusal is None or wait_when_full:
        person = NewPerson(**fields, area=area, readonly=readonly, directory_id=directory_id)
        user = _new_user(person, source=source, path=path, now=now)
        ad.set(user, "active", True)
    if refusal is None:
        # The admission's audit row is written before the flush takes the seat, so that the
        # counter's row lock is held for the person's two rows and the COMMIT only. If the
        # conditional UPDATE refuses after all (a race for the last seat), it is withdrawn
        # in the same transaction: nobody ever sees it.
        admitted_row = audit.record_withdrawable(
            session,
            at=now,
            actor=actor,
            action="add",
            path=path,
            subject=fields["username"],
            pool=pool,
        )
        session.add(user)
        session.info[_READING] = read
        try:
            _flush(session, now)
        except SeatLimitExceeded as exc:
            refusal = exc
            audit.withdraw(session, admitted_row)
            session.expunge(user)
        else:
            return user
    if not wait_when_full:
        _refused(
            session,
            refusal,
            actor=actor,
            action="add",
            path=path,
            subject=fields["username"],
            now=now,
        )
        raise refusal
    ad.set(user, "active", False)
    inspect(user).info["licenses_profile"].update(block_reason=AWAITING_LICENSE, waiting_since=now)
    session.add(user)
    _flush(session, now)
    session.info[_WAITING_CHANGED] = True  # a new profile (written by Core) that waits
    notifications.exceeded(
        session,
        pool=pool,
        trigger="waiting",
        path=path,
        usernames=[fields["username"]],
        now=now,
    )
    audit.record(
        session,
        at=now,
        actor=actor,
        action="add",
        path=path,
        outcome="waiting",
        subject=fields["username"],
        pool=pool,
        detail=str(refusal),
    )
    return user


def block(session, user, *, reason: str = BLOCKED_BY_ADMIN, actor: str, now: datetime, path):
    """Block a person (frees their seat at once). ``reason`` is one of BLOCK_REASONS."""
    ad = adapter()
    profile = _locked_profile(session, user)
    username = ad.get(user, "username")
    if profile.exempt:
        refusal = PersonError("The administrator account cannot be blocked.")
        _refused(
            session, refusal, actor=actor, action="block", path=path, subject=username, now=now
        )
        raise refusal
    if not ad.get(user, "active") and profile.block_reason == reason:
        return
    inspect(user).info["licenses_path"] = path
    ad.set(user, "active", False)
    profile.block_reason = reason
    profile.waiting_since = now if reason == AWAITING_LICENSE else None
    _flush(session, now)
    audit.record(
        session,
        at=now,
        actor=actor,
        action="block",
        path=path,
        subject=username,
        pool=profile.pool,
        detail=f"reason: {reason}",
    )


def unblock(
    session,
    user,
    *,
    actor: str,
    now: datetime,
    path: str,
    action: str = "unblock",
    only_reason: str | None = None,
) -> bool:
    """Make a blocked person active again if their pool has a free seat; True if this did.

    With ``only_reason``, a person blocked for another reason is left blocked: 'Activate
    waiting' seats the people awaiting a license, and an administrator may have blocked one
    of them meanwhile (read here after the row's lock, as committed).
    """
    ad = adapter()
    profile = _locked_profile(session, user)
    username = ad.get(user, "username")
    if ad.get(user, "active"):
        return False
    if only_reason is not None and profile.block_reason != only_reason:
        return False
    inspect(user).info["licenses_path"] = path
    ad.set(user, "active", True)
    try:
        _flush(session, now)
    except SeatLimitExceeded as refusal:
        session.expire(user)
        session.expire(profile)
        _refused(
            session, refusal, actor=actor, action=action, path=path, subject=username, now=now
        )
        raise
    audit.record(
        session, at=now, actor=actor, action=action, path=path, subject=username, pool=profile.pool
    )
    return True


def activate(session, user, *, blocked_as: str, actor: str, now: datetime, path: str) -> bool:
    """Seat a person blocked for the reason ``blocked_as`` (awaiting a license, or blocked by
    the directory that enables them again), if their pool has a free seat; True if this did.
    Anyone else is left as they are: an administrator may have blocked them meanwhile."""
    return unblock(
        session, user, actor=actor, now=now, path=path, action="activate", only_reason=blocked_as
    )


def delete(session, user, *, actor: str, now: datetime, path: str) -> None:
    """Delete a person for good (frees their seat)."""
    ad = adapter()
    profile = _locked_profile(session, user)
    username = ad.get(user, "username")
    if profile.exempt:
        refusal = PersonError("The administrator account cannot be deleted.")
        _refused(
            session, refusal, actor=actor, action="delete", path=path, subject=username, now=now
        )
        raise refusal
    inspect(user).info["licenses_path"] = path
    pool = profile.pool
    session.delete(user)
    _flush(session, now)
    audit.record(
        session, at=now, actor=actor, action="delete", path=path, subject=username, pool=pool
    )


def move(session, user, *, area: str, readonly: bool, actor: str, now: datetime, path: str):
    """Move a person to another area or pool; refused (nothing changes) if it is full."""
    ad = adapter()
    profile = _locked_profile(session, user)
    username = ad.get(user, "username")
    area = check_area(area)
    if (profile.area, profile.readonly) == (area, readonly):
        return
    old = f"{profile.area}/{profile.pool}"
    inspect(user).info["licenses_path"] = path
    profile.area = area
    profile.readonly = readonly
    profile.pool = pool_for(area, readonly)
    try:
        _flush(session, now)
    except SeatLimitExceeded as refusal:
        session.expire(profile)
        _refused(
            session, refusal, actor=actor, action="move", path=path, subject=username, now=now
        )
        raise
    audit.record(
        session,
        at=now,
        actor=actor,
        action="move",
        path=path,
        subject=username,
        pool=profile.pool,
        detail=f"from {old} to {profile.area}/{profile.pool}",
    )


@dataclass
class ActivationResult:
    activated: list[str]
    still_waiting: int
    #: The user ids of the people activated (in the order they were activated).
    activated_ids: list[int] = field(default_factory=list)


#: People activated per flush by ``activate_waiting``.
ACTIVATE_BATCH = 500


def activate_waiting(
    session, *, actor: str, now: datetime, path: str, only_ids=None
) -> ActivationResult:
    """Activate people awaiting a license, oldest first, while their pool has free seats.

    ``only_ids`` limits it to these user ids (a directory sync passes the people the
    directory still lists).

    The free seats are read first, and the oldest who fit are activated in batches: each
    batch in one flush, whose safety net takes its seats with one conditional UPDATE per
    pool (one flush per person made 760 people/s, so 20,000 waiting people were half a
    minute of a web request). The first person of a pool who does not fit is tried on
    their own, as an unblock: refused and recorded when the pool is full, activated if a
    seat came free meanwhile, and so on. A batch that finds fewer seats than were read
    (someone was admitted in between) is done one by one the same way, and so are the
    people after it in its pools (a later batch would have seated younger people first).
    """
    session.flush()  # the caller's pending changes first: the batches re-read people
    query = (
        select(Profile.user_id, Profile.pool)
        .where(Profile.block_reason == AWAITING_LICENSE)
        .order_by(Profile.waiting_since, Profile.user_id)
    )
    queue = [
        (user_id, pool)
        for user_id, pool in session.execute(query).all()
        if only_ids is None or user_id in only_ids
    ]
    pools = sorted({pool for _, pool in queue})
    free: dict[str, int | None] = {}
    if pools:
        read, _ = _read_pools(session, session.connection(), pools, now.date())
        limits = licensing.limits_of(read.current.status)
        for pool in pools:
            used = read.readings[pool].used if pool in read.readings else 0
            free[pool] = None if limits[pool] is None else max(limits[pool] - used, 0)
    result = ActivationResult([], 0, [])
    pool_of = dict(queue)
    batch: list[int] = []
    one_by_one: list[int] = []
    # The pools of a refused batch: everyone after in them goes one by one too, so that no
    # later batch gives a seat to someone younger than the refused batch's people.
    refused_pools: set[str] = set()

    def flush_batch() -> None:
        refused = _activate_batch(session, batch, result, actor=actor, now=now, path=path)
        refused_pools.update(pool_of[user_id] for user_id in refused)
        one_by_one.extend(refused)
        batch.clear()

    for user_id, pool in queue:
        if free[pool] == 0 or pool in refused_pools:
            one_by_one.append(user_id)  # in queue order, behind those who fit
            continue
        if free[pool] is not None:
            free[pool] -= 1
        batch.append(user_id)
        if len(batch) == ACTIVATE_BATCH:
            flush_batch()
    flush_batch()
    place = {user_id: n for n, (user_id, _) in enumerate(queue)}
    one_by_one.sort(key=place.__getitem__)  # a refused batch's people are older than some
    _activate_one_by_one(session, one_by_one, result, actor=actor, now=now, path=path)
    return result


def _activate_batch(session, user_ids, result, *, actor, now, path) -> list[int]:
    """Activate these waiting people in one flush; returns those left to try one by one
    (all of them, when the flush found a pool without the seats it needs)."""
    if not user_ids:
        return []
    ad = adapter()
    table = Profile.__table__
    conn = session.connection()
    # Lock their profile rows first, as _locked_profile does for one person, then re-read
    # them as committed: whoever another request activated, blocked or deleted meanwhile is
    # left alone.
    conn.execute(
        update(table).where(table.c.user_id.in_(user_ids)).values(seat_pool=table.c.seat_pool)
    )
    still = set(
        conn.execute(
            select(table.c.user_id).where(
                table.c.user_id.in_(user_ids), table.c.block_reason == AWAITING_LICENSE
            )
        ).scalars()
    )
    users = {
        ad.get(user, "id"): user
        for user in session.scalars(
            select(ad.model)
            .where(ad.column("id").in_(still))
            .execution_options(populate_existing=True)
        )
    }
    profiles = {
        profile.user_id: profile
        for profile in session.scalars(
            select(Profile)
            .where(Profile.user_id.in_(still))
            .execution_options(populate_existing=True)
        )
    }  # loaded together: the safety net finds them in the session, one SELECT each saved
    people = [users[user_id] for user_id in user_ids if user_id in users]
    people = [user for user in people if not ad.get(user, "active")]
    if not people:
        return []
    for user in people:
        inspect(user).info["licenses_path"] = path
        ad.set(user, "active", True)
    try:
        _flush(session, now)
    except SeatLimitExceeded:
        session.info.pop("licenses_refusal", None)  # not a refusal yet: tried one by one
        ids = [ad.get(user, "id") for user in people]
        for user, user_id in zip(people, ids, strict=True):  # their changes undone
            session.expire(user)
            session.expire(profiles[user_id])
            inspect(user).info.pop("licenses_path", None)
        return ids
    events = []
    for user in people:
        profile = profiles[ad.get(user, "id")]
        events.append(
            {
                "at": now,
                "actor": actor,
                "action": "activate",
                "path": path,
                "subject": ad.get(user, "username"),
                "pool": profile.pool,
            }
        )
        result.activated.append(ad.get(user, "username"))
        result.activated_ids.append(ad.get(user, "id"))
        session.expunge(user)  # flushed: activating 100,000 keeps no objects
        session.expunge(profile)
    audit.record_many(session, events)
    return []


def _activate_one_by_one(session, user_ids, result, *, actor, now, path) -> None:
    """Unblock these waiting people in turn, until each one's pool refuses the first."""
    ad = adapter()
    full: set[str] = set()
    for user_id in user_ids:
        profile = session.get(Profile, user_id)
        if profile is None or profile.pool in full:
            result.still_waiting += 1
            continue
        user = session.get(ad.model, user_id)
        try:
            seated = activate(
                session, user, blocked_as=AWAITING_LICENSE, actor=actor, now=now, path=path
            )
            if not seated:
                continue  # no longer waiting: activated, or blocked by someone, meanwhile
        except SeatLimitExceeded:
            full.add(profile.pool)
            result.still_waiting += 1
            continue
        result.activated.append(ad.get(user, "username"))
        result.activated_ids.append(user_id)


def _waiting_drift(session):
    """(stored, counted, pending) waiting counts per pool, read in one statement so that
    they agree: the stored sum, a count of the profiles, and the rows other transactions
    wrote that are not folded yet (on PostgreSQL; the recount keeps those).

    The waiting counts are kept by triggers (migration 0006): a drift means that they were
    dropped, or that the table was written without them (TRUNCATE, a restore, a rebuild).
    """
    fold_waiting(session)
    columns = []
    for pool in POOLS:
        counted = select(func.count()).where(
            Profile.block_reason == AWAITING_LICENSE, Profile.pool == pool
        )
        pending = _waiting_column(pool).where(_waiting.c.tx != 0)
        columns += [
            _waiting_column(pool).scalar_subquery(),
            counted.scalar_subquery(),
            pending.scalar_subquery(),
        ]
    row = session.execute(select(*columns)).one()
    stored, counted, pending = (dict(zip(POOLS, row[i::3], strict=True)) for i in range(3))
    return stored, counted, pending


def recount(session, *, actor: str, now: datetime) -> list[str]:
    """Check the counters and profiles against the host's users and repair any drift.

    Creates profiles for users that have none (users from before the extension), sets
    each profile's seat from the user's active flag, and rewrites the counters from the
    profiles. Returns sentences saying what was found and repaired.
    """
    ad = adapter()
    findings: list[str] = []
    # Hold the counters from the start: an admission or release that committed between
    # the count below and its write would otherwise be overwritten. On PostgreSQL a table
    # lock, not row locks one by one: a transaction that holds one counter row and takes
    # another later (a sync, batch by batch) finishes first, instead of deadlocking with a
    # recount that holds the other row.
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("LOCK TABLE licenses_seat_counter IN SHARE ROW EXCLUSIVE MODE")
    conn.execute(select(_counters.c.pool).order_by(_counters.c.pool).with_for_update()).all()
    id_col = ad.column("id")
    missing = session.execute(
        select(ad.model).where(~id_col.in_(select(Profile.user_id)))
    ).scalars()
    adopted = 0
    for user in missing:
        values = _new_profile_values(ad, user, now)
        values["seat_pool"] = None
        session.add(Profile(user_id=ad.get(user, "id"), **values))
        adopted += 1
    if adopted:
        findings.append(f"Created profiles for {adopted} people who had none.")
    _flush(session, now)

    orphans = session.execute(
        select(Profile).where(~Profile.user_id.in_(select(id_col)))
    ).scalars()
    removed = 0
    for profile in orphans:
        session.delete(profile)
        removed += 1
    if removed:
        findings.append(f"Removed {removed} profiles whose user no longer exists.")

    # Set-based, so that a recount of a million profiles is a few statements, not a million
    # objects in the session. The host's active flag is read per profile by a correlated
    # subquery; flushed first, so these statements see the profiles adopted above.
    _flush(session, now)
    active = select(ad.column("active")).where(id_col == Profile.user_id).scalar_subquery()
    is_admin = Profile.username_key == _key(config("ADMIN_USERNAME"))
    want = case((and_(active.is_(True), Profile.exempt.is_(False)), Profile.pool), else_=None)

    def repair(statement) -> int:
        options = {"synchronize_session": False}
        return session.execute(statement, execution_options=options).rowcount

    exemptions = repair(update(Profile).where(Profile.exempt != is_admin).values(exempt=is_admin))
    wrong = repair(
        update(Profile).where(Profile.seat_pool.is_distinct_from(want)).values(seat_pool=want)
    )
    repair(
        update(Profile)
        .where(active.is_(True), Profile.block_reason.is_not(None))
        .values(block_reason=None, waiting_since=None)
    )
    repair(
        update(Profile)
        .where(active.is_(False), or_(Profile.block_reason.is_(None), Profile.block_reason == ""))
        .values(block_reason=BLOCKED_BY_ADMIN)
    )
    session.expire_all()  # objects the session holds may be stale after these statements
    if exemptions:
        findings.append(
            f"Corrected {exemptions} profiles marked wrongly as the administrator account "
            f"(only '{config('ADMIN_USERNAME')}' never takes a seat)."
        )
    if wrong:
        findings.append(f"Corrected the seat of {wrong} profiles.")
    # The counters are rewritten from the profiles below, so this flush moves none.
    session.info["licenses_recounting"] = True
    try:
        _flush(session, now)
    finally:
        session.info.pop("licenses_recounting", None)
    conn = session.connection()

    actual = dict(
        session.execute(
            select(Profile.seat_pool, func.count())
            .where(Profile.seat_pool.is_not(None))
            .group_by(Profile.seat_pool)
        ).all()
    )
    stored = usage(session)
    stored_waiting, real_waiting, pending = _waiting_drift(session)
    # Only a valid license has limits to be over (without one, every limit reads 0).
    status = licensing.current(session, now.date()).status
    limits = licensing.limits_of(status) if status.valid else dict.fromkeys(POOLS)
    for pool in POOLS:
        real = actual.get(pool, 0)
        if stored[pool] != real:
            findings.append(f"The {pool} counter read {stored[pool]}; it now reads {real}.")
        if stored[pool] < real and limits[pool] is not None and real > limits[pool]:
            # People were activated behind the seat service's back (raw SQL, bulk updates):
            # say so, and tell the Responsible person (rule 6), instead of accepting it.
            over = real - limits[pool]
            findings.append(
                f"The {pool} pool is over its limit: {real} people are active for "
                f"{limits[pool]} seats. Block or delete {over}, or request more licenses."
            )
            notifications.exceeded(
                session, pool=pool, trigger="recount", path="cli", count=over, now=now
            )
        if stored_waiting[pool] != real_waiting[pool]:
            findings.append(
                f"The {pool} count of people waiting for a license read "
                f"{stored_waiting[pool]}; it now reads {real_waiting[pool]}."
            )
        existing = conn.execute(select(_counters.c.pool).where(_counters.c.pool == pool)).first()
        if existing is None:
            conn.execute(insert(_counters).values(pool=pool, used=real))
        else:
            conn.execute(update(_counters).where(_counters.c.pool == pool).values(used=real))
        base = real_waiting[pool] - pending[pool]  # rows of other transactions stay as they are
        here = and_(_waiting.c.pool == pool, _waiting.c.tx == 0)
        if not conn.execute(update(_waiting).where(here).values(waiting=base)).rowcount:
            conn.execute(insert(_waiting).values(pool=pool, tx=0, waiting=base))
    notifications.seats_freed(session, POOLS, now)
    audit.record(
        session,
        at=now,
        actor=actor,
        action="recount",
        path="cli",
        detail=" ".join(findings) or "No drift.",
    )
    _flush(session, now)
    return findings


# Many people at once (CSV import) --------------------------------------------------------


def record_refusal(session, refusal: SeatError, *, actor, action, path, now, subject=None):
    """Record a refused seat action; every refusal, single or bulk, goes through ``_refused``."""
    _refused(session, refusal, actor=actor, action=action, path=path, subject=subject, now=now)


def shortfalls(session, needed: dict[str, int], now: datetime) -> list[SeatLimitExceeded]:
    """For every pool where ``needed`` new seats exceed the free ones, the refusal it means.

    An up-front check only: the conditional UPDATE in the flush stays the final gate.
    """
    found = []
    status = None
    for figure in figures(session, now):
        wanted = needed.get(figure.pool, 0)
        if wanted <= 0 or figure.limit is None or wanted <= figure.free:
            continue
        if status is None:
            status = licensing.current(session, now.date()).status
        found.append(
            SeatLimitExceeded(
                figure.pool,
                figure.limit,
                figure.used,
                needed=wanted,
                why=None if status.valid else status.sentence,
            )
        )
    return found


@dataclass(frozen=True)
class NewPerson:
    """One checked person for :func:`add_many` (fields cleaned as by check_person_fields)."""

    username: str
    first_name: str
    surname: str
    email: str
    area: str = PRIMARY_AREA
    readonly: bool = False
    #: False: created blocked by an administrator, taking no seat.
    active: bool = True
    #: The directory's stable id (directory sync only).
    directory_id: str | None = None


def _new_user(person: NewPerson, *, source: str, path: str, now: datetime, **profile):
    """The host user for ``person``, carrying the profile the listener creates at the flush."""
    user = adapter().new_user(
        username=person.username,
        first_name=person.first_name,
        surname=person.surname,
        email=person.email,
    )
    info = inspect(user).info
    info["licenses_path"] = path
    info["licenses_profile"] = {
        "area": person.area,
        "readonly": person.readonly,
        "source": source,
        "directory_id": person.directory_id,
        "created_at": now,
        **profile,
    }
    return user


def add_many(
    session,
    people,
    *,
    source: str,
    path: str,
    actor: str,
    now: datetime,
    batch_size: int = 500,
    after_batch=None,
) -> Counter:
    """Create many checked people, flushing every ``batch_size``; returns counts per
    (area, pool, active).

    Each flush takes the batch's seats with the same conditional UPDATE as a single add, so
    a pool that fills up meanwhile raises SeatLimitExceeded from the flush. Nothing is
    committed here: the caller commits once (all or nothing) or rolls back. Memory stays
    flat: nothing holds on to a flushed batch. ``after_batch(n)`` is called with the number
    of people flushed so far.
    """
    ad = adapter()
    created: Counter = Counter()
    batch: list = []
    events: list[dict] = []
    done = 0

    def flush_batch():
        nonlocal done
        _flush(session, now)
        audit.record_many(session, events)
        done += len(batch)
        # Flushed objects are held weakly by the session: dropping them keeps memory flat.
        batch.clear()
        events.clear()
        if after_batch is not None:
            after_batch(done)

    for person in people:
        user = _new_user(
            person,
            source=source,
            path=path,
            now=now,
            block_reason=None if person.active else BLOCKED_BY_ADMIN,
        )
        ad.set(user, "active", person.active)
        pool = pool_for(person.area, person.readonly)
        session.add(user)
        batch.append(user)
        events.append(
            {
                "at": now,
                "actor": actor,
                "action": "add",
                "path": path,
                "subject": person.username,
                "pool": pool,
                "detail": "" if person.active else "created blocked",
            }
        )
        created[(person.area, pool, person.active)] += 1
        if len(batch) >= batch_size:
            flush_batch()
    if batch:
        flush_batch()
    return created


@dataclass
class Admitted:
    """What :func:`admit_or_wait` did with one batch."""

    #: (person, True when active / False when awaiting a license), in the batch's order.
    created: list[tuple[NewPerson, bool]] = field(default_factory=list)
    #: (person, why) for people not created: their username or email is taken.
    refused: list[tuple[NewPerson, PersonError]] = field(default_factory=list)


def admit_or_wait(
    session, people: list[NewPerson], *, source: str, path: str, actor: str, now: datetime
) -> Admitted:
    """Create a batch of checked people in one flush (rule 3, directory sync only): in each
    pool as many active as it has free seats, taken with one conditional UPDATE of its
    counter, and the others blocked, awaiting a license, in the batch's order (so the first
    listed get the seats and the rest queue behind everyone already waiting).

    ``people`` hold fields already cleaned by :func:`check_person_fields` and canonical area
    names. A username (or, for hosts with ``unique_email``, an email) that is taken,
    also within the batch, is not created and comes back in ``refused``. Audit rows are
    written for everyone created, and an exceeded event is reported per pool for this batch;
    a caller that creates several batches reports its totals too (see
    ``notifications.exceeded``). Nothing is committed here. Keep batches to a few hundred
    people: they are ORM objects until the flush (the host's ``new_user`` builds each).
    """
    ad = adapter()
    result = Admitted()
    people = _not_taken(session, people, result)
    batch = []
    for person in people:
        user = _new_user(person, source=source, path=path, now=now)
        session.add(user)
        batch.append((person, user, pool_for(person.area, person.readonly)))
    if not batch:
        return result
    pools = {pool for _, _, pool in batch}
    while True:
        with session.no_autoflush:  # the batch is flushed below, once it is marked
            limits = licensing.limits(session, now.date())
            used = usage(session)
        free = {p: None if limits[p] is None else max(limits[p] - used[p], 0) for p in pools}
        result.created = []
        for person, user, pool in batch:
            active = free[pool] is None or free[pool] > 0
            if active and free[pool] is not None:
                free[pool] -= 1
            ad.set(user, "active", active)
            inspect(user).info["licenses_profile"].update(
                block_reason=None if active else AWAITING_LICENSE,
                waiting_since=None if active else now,
            )
            result.created.append((person, active))
        try:
            _flush(session, now)  # the listener takes the seats: the one gate
            break
        except SeatLimitExceeded:
            continue  # seats were taken since they were read: nothing written, ask again

    waiting = Counter()
    names: dict[str, list[str]] = {}
    events = []
    sentence = {}
    for person, active in result.created:
        pool = pool_for(person.area, person.readonly)
        event = {"at": now, "actor": actor, "action": "add", "path": path,
                 "subject": person.username, "pool": pool}  # fmt: skip
        if not active:
            if pool not in sentence:
                status = licensing.current(session, now.date()).status
                sentence[pool] = str(
                    SeatLimitExceeded(
                        pool,
                        licensing.limits(session, now.date())[pool],
                        _used(session.connection(), pool),
                        why=None if status.valid else status.sentence,
                    )
                )
            event |= {"outcome": "waiting", "detail": sentence[pool]}
            waiting[pool] += 1
            if len(names.setdefault(pool, [])) < 20:
                names[pool].append(person.username)
        events.append(event)
    audit.record_many(session, events)
    for pool, count in sorted(waiting.items()):
        notifications.exceeded(
            session,
            pool=pool,
            trigger="waiting",
            path=path,
            usernames=names[pool],
            count=count,
            now=now,
        )
    return result


def _not_taken(session, people: list[NewPerson], result: Admitted) -> list[NewPerson]:
    """The people whose username (and email, when the host needs it unique) is free."""
    ad = adapter()
    keys = {_key(p.username) for p in people}
    taken = set(
        session.scalars(select(Profile.username_key).where(Profile.username_key.in_(keys)))
    )
    emails: set[str] = set()
    if ad.unique_email:
        wanted = {_key(p.email) for p in people if p.email}
        found = select(Profile.email_key).where(Profile.email_key.in_(wanted))
        emails = set(session.scalars(found))
    free = []
    for person in people:
        key, email = _key(person.username), _key(person.email)
        if key in taken:
            result.refused.append(
                (
                    person,
                    PersonError(
                        f"A person with the username '{person.username}' already exists "
                        "(usernames are compared without regard to case)."
                    ),
                )
            )
            continue
        if ad.unique_email and email and email in emails:
            result.refused.append(
                (
                    person,
                    PersonError(
                        f"{person.username}: another person already has the email address "
                        f"{person.email}."
                    ),
                )
            )
            continue
        taken.add(key)
        if email:
            emails.add(email)
        free.append(person)
    return free

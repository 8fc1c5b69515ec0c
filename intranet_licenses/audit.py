"""The record of every seat action: who, when, which path, what, and how it ended (rule 11)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, insert

from .models import AuditEvent

_table = AuditEvent.__table__
#: Without RETURNING: almost no row is referred to again, and fetching its id costs a result.
_INSERT = _table.insert().inline()
_INSERT_RETURNING_ID = _table.insert().returning(_table.c.id)
_DELETE = _table.delete().where(_table.c.id == bindparam("event_id"))


def record(
    session,
    *,
    at: datetime,
    actor: str,
    action: str,
    path: str,
    outcome: str = "ok",
    subject: str | None = None,
    pool: str | None = None,
    detail: str = "",
) -> None:
    """Write one audit event in the caller's transaction; its commit (or rollback) decides.

    A Core INSERT on the session's connection, at once: no ORM object, no flush (the seat
    service writes one for every attempt, admitted or refused). It does not flush the
    session, so it may be called from inside a flush.
    """
    session.connection().execute(
        _INSERT, _row(at, actor, action, path, outcome, subject, pool, detail)
    )


def record_withdrawable(
    session,
    *,
    at: datetime,
    actor: str,
    action: str,
    path: str,
    subject: str | None = None,
    pool: str | None = None,
) -> int:
    """``record`` an event (outcome ok) that may have to be withdrawn; returns its id for
    :func:`withdraw`."""
    row = _row(at, actor, action, path, "ok", subject, pool, "")
    return session.connection().execute(_INSERT_RETURNING_ID, row).scalar_one()


def _row(at, actor, action, path, outcome, subject, pool, detail) -> dict:
    return {
        "at": at,
        "actor": actor,
        "action": action,
        "path": path,
        "outcome": outcome,
        "subject": subject,
        "pool": pool,
        "detail": detail,
    }


def withdraw(session, event_id: int) -> None:
    """Remove an event written earlier in this same, uncommitted transaction.

    For an outcome written before it was final (an admission's row, written before the seat
    was taken, whose seat then went to someone else): no other transaction has seen it.
    """
    session.connection().execute(_DELETE, {"event_id": event_id})


def record_many(session, events: list[dict]) -> None:
    """Write many audit events at once (bulk imports); each dict has ``record``'s arguments."""
    if events:
        session.execute(
            insert(_table),
            [{"outcome": "ok", "subject": None, "pool": None, "detail": "", **e} for e in events],
        )

"""The record of every seat action: who, when, which path, what, and how it ended (rule 11)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert

from .models import AuditEvent


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
) -> AuditEvent:
    """Add one audit event to the session; the caller's transaction commits it."""
    event = AuditEvent(
        at=at,
        actor=actor,
        action=action,
        path=path,
        outcome=outcome,
        subject=subject,
        pool=pool,
        detail=detail,
    )
    session.add(event)
    return event


def record_many(session, events: list[dict]) -> None:
    """Write many audit events at once (bulk imports); each dict has ``record``'s arguments."""
    if events:
        session.execute(
            insert(AuditEvent.__table__),
            [{"outcome": "ok", "subject": None, "pool": None, "detail": "", **e} for e in events],
        )

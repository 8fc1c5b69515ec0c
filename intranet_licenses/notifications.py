"""The Responsible person and the over-limit email (rules 6, 7 and 10)."""

from __future__ import annotations

from .models import Setting

RESPONSIBLE_PERSON = "responsible_person"


def responsible_person(session) -> str | None:
    """The address told when a limit is exceeded, or None when nobody is set."""
    setting = session.get(Setting, RESPONSIBLE_PERSON)
    return setting.value if setting is not None and setting.value else None

"""SSO just-in-time sign-in: an identity provider's claims become a profile, within the seats.

The host calls :func:`sign_in` from its SSO callback with the claims the provider vouched
for. It returns the host user to log in: the existing profile (matched by username without
regard to case) or a new active profile (source ``sso``) when the pool has a free seat.
Otherwise it raises :class:`SignInRefused`, whose ``str()`` is a sentence the login page can
show; a refused sign-in leaves no profile behind (only the audit record of the refusal).
Like the seat service, it flushes and the caller commits, also after a refusal. Two
sign-ins of the same new person at once give one profile: the one that loses the race rolls
its session back (sign-in has nothing else pending) and returns the profile the other made.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy.exc import IntegrityError

from . import access, seats
from .errors import LicensesError
from .models import PRIMARY_AREA

#: Claim names read, in order of preference (OpenID Connect's standard claims first).
USERNAME_CLAIMS = ("preferred_username", "username", "upn", "email")
FIRST_NAME_CLAIMS = ("given_name", "first_name")
SURNAME_CLAIMS = ("family_name", "surname")


class SignInRefused(LicensesError):
    """The person may not sign in now. ``kind`` is one of:

    ``full`` (no free license for a new account), ``blocked``, ``waiting`` (awaiting a
    license) or ``invalid`` (the claims lack what a profile needs).
    """

    def __init__(self, kind: str, message: str):
        self.kind = kind
        self.message = message
        super().__init__(message)


def _claim(claims: Mapping, names) -> str:
    for name in names:
        value = claims.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def sign_in(
    session,
    claims: Mapping,
    *,
    now: datetime,
    area: str = PRIMARY_AREA,
    readonly: bool = False,
    actor: str = "sso",
):
    """The host user for these claims, or SignInRefused (see the module docstring)."""
    # With no username claim the whole email address is the username (never its local part:
    # alice@a.example and alice@b.example are two people).
    username = _claim(claims, USERNAME_CLAIMS)
    if not username:
        raise SignInRefused(
            "invalid",
            "The sign-in service did not say who you are (no username). "
            f"Ask {access.whom_to_ask()} to check the single sign-on setup.",
        )
    if not username.isprintable() or len(username) > 255:
        raise SignInRefused(
            "invalid",
            "The sign-in service sent a username that cannot be used (a control or "
            "invisible character, or more than 255 characters). "
            f"Ask {access.whom_to_ask()} to check it.",
        )
    user = _existing(session, username)
    if user is not None:
        return user

    first_name = _claim(claims, FIRST_NAME_CLAIMS)
    surname = _claim(claims, SURNAME_CLAIMS)
    if not (first_name and surname):
        parts = _claim(claims, ("name",)).split()
        if len(parts) >= 2:
            first_name = first_name or " ".join(parts[:-1])
            surname = surname or parts[-1]
    try:
        return seats.add_person(
            session,
            username=username,
            first_name=first_name,
            surname=surname,
            email=_claim(claims, ("email",)),
            area=area,
            readonly=readonly,
            source="sso",
            path="sso",
            actor=actor,
            now=now,
        )
    except seats.SeatLimitExceeded:
        raise SignInRefused(
            "full",
            "Your intranet account cannot be created: all licenses are in use. "
            f"Ask {access.whom_to_ask()} to free a license or to request more, "
            "then sign in again.",
        ) from None
    except IntegrityError:
        # The same person's other sign-in created the profile a moment ago (two tabs, a
        # retried callback). Start over on a clean transaction and use that profile.
        session.rollback()
        user = _existing(session, username)
        if user is None:
            raise
        return user
    except seats.PersonError as exc:
        user = _existing(session, username)  # created by a parallel sign-in since the lookup
        if user is not None:
            return user
        raise SignInRefused(
            "invalid",
            f"Your intranet account cannot be created: {exc} "
            f"Ask {access.whom_to_ask()} to check the single sign-on setup.",
        ) from None


def _existing(session, username: str):
    """The profile with this username (any letter case), or None; refused if not usable."""
    try:
        user = seats.find_person(session, username)
    except seats.PersonError:
        return None
    refusal = access.login_refusal(user)
    if refusal is not None:
        raise SignInRefused(refusal.kind, refusal.message)
    return user

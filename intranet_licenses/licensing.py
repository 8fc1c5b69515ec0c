"""The license in force: installing one, reading its status, and the seat limits it grants."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache

from sqlalchemy import select

from . import audit
from .errors import LicensesError
from .extension import config
from .license_file import POOLS, Status, evaluate, load_public_keys
from .models import InstalledLicense

#: A license file is a few hundred bytes; anything much larger is not one.
MAX_LICENSE_BYTES = 1024 * 1024


class LicenseFetchError(LicensesError):
    """The license could not be downloaded; ``str(error)`` says why."""


class LicenseRefused(LicensesError):
    """A license that cannot be installed; ``status`` says why."""

    def __init__(self, status: Status):
        super().__init__(f"{status.sentence} The license in force was not changed.")
        self.status = status


@dataclass(frozen=True)
class Current:
    """The license in force and when it was installed (None when none is installed)."""

    status: Status
    installed_at: datetime | None


@lru_cache(maxsize=16)
def _keys(values: tuple[str, ...]):
    return load_public_keys(list(values))


@lru_cache(maxsize=64)
def _evaluate(text: str | None, keys: tuple[str, ...], site_name: str, today: date) -> Status:
    return evaluate(text, _keys(keys), site_name, today)


def _config_keys() -> tuple[str, ...]:
    value = config("PUBLIC_KEYS")
    if isinstance(value, str):
        value = [value]
    return tuple(str(v) for v in value)


def check_text(text: str | None, today: date) -> Status:
    """The status ``text`` would have if it were installed today, on this site."""
    return _evaluate(text, _config_keys(), config("SITE_NAME"), today)


def newest():
    """The newest installed license's text and installed_at, as a subquery (the one in force).

    For a statement that reads the license beside other figures in one round trip (the
    seat service reads it with the counters); judge the row with :func:`current_of`.
    """
    return (
        select(InstalledLicense.text, InstalledLicense.installed_at)
        .order_by(InstalledLicense.id.desc())
        .limit(1)
        .subquery("newest_license")
    )


def current_of(text: str | None, installed_at: datetime | None, today: date) -> Current:
    """The license in force given its row (None, None when none is installed), on ``today``.

    The text is verified and parsed once per process (``check_text`` is cached on the
    exact text), so a row read on every admission costs a dictionary look-up.
    """
    return Current(check_text(text, today), installed_at if text is not None else None)


def current(session, today: date) -> Current:
    """The license in force and its status on ``today`` (UTC)."""
    row = session.execute(
        select(InstalledLicense.text, InstalledLicense.installed_at)
        .order_by(InstalledLicense.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return current_of(None, None, today)
    return current_of(row.text, row.installed_at, today)


def limits_of(status: Status) -> dict[str, int | None]:
    """Seats per pool for admissions under ``status``: None is Unlimited; 0 unless valid."""
    if not status.valid:
        return dict.fromkeys(POOLS, 0)
    return {pool: status.license.pool_limit(pool) for pool in POOLS}


def installed_text(session) -> str | None:
    """The text of the license in force exactly as installed (valid or not), or None."""
    return session.scalar(
        select(InstalledLicense.text).order_by(InstalledLicense.id.desc()).limit(1)
    )


def limits(session, today: date) -> dict[str, int | None]:
    """Seats per pool for admissions: None is Unlimited; every limit is 0 unless valid."""
    return limits_of(current(session, today).status)


def install(session, text: str, *, actor: str, now: datetime, path: str) -> Status:
    """Install ``text`` if it is a valid license for this site; else raise LicenseRefused."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    status = check_text(text, now.date())
    if not status.valid:
        audit.record(
            session,
            at=now,
            actor=actor,
            action="install",
            path=path,
            outcome="refused",
            detail=status.sentence,
        )
        raise LicenseRefused(status)
    session.add(InstalledLicense(text=text, installed_at=now, installed_by=actor))
    _notify_install(session, status, now=now, path=path)
    from . import license_requests

    license_requests.fulfil(
        session, {pool: status.license.pool_limit(pool) for pool in POOLS}, now=now
    )
    audit.record(
        session,
        at=now,
        actor=actor,
        action="install",
        path=path,
        detail=f"Registered to {status.license.registered_to or 'nobody'}",
    )
    session.flush()
    return status


def _notify_install(session, status: Status, *, now: datetime, path: str) -> None:
    """Tell the notifications a license came in: limits changed, maybe below usage."""
    from . import notifications, seats  # both import this module

    notifications.remember_license_state(session, status.state)
    notifications.seats_freed(session, POOLS, now)
    used = seats.usage(session)
    for pool in POOLS:
        limit = status.license.pool_limit(pool)
        if limit is not None and used.get(pool, 0) > limit:
            notifications.exceeded(
                session,
                pool=pool,
                trigger="install",
                path=path,
                count=used[pool] - limit,
                now=now,
            )


def validity_sentence(current: Current) -> str:
    """'License is valid. Last updated on: DATE. License expires: Never' or what is wrong."""
    status = current.status
    if not status.valid:
        return status.sentence
    updated = current.installed_at.strftime("%Y-%m-%d") if current.installed_at else "unknown"
    expires = status.license.expires
    return (
        f"License is valid. Last updated on: {updated}. "
        f"License expires: {expires.isoformat() if expires else 'Never'}"
    )


def fetch(url: str, *, timeout: float = 10) -> str:
    """Download a license text from ``url``; LicenseFetchError says what went wrong."""
    if not url.lower().startswith(("https://", "http://")):
        raise LicenseFetchError(f"{url} is not an http:// or https:// address.")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            raw = response.read(MAX_LICENSE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise LicenseFetchError(
            f"Could not fetch a license from {url}: the server answered {exc.code} {exc.reason}."
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LicenseFetchError(f"Could not fetch a license from {url}: {reason}.") from None
    if len(raw) > MAX_LICENSE_BYTES:
        raise LicenseFetchError(f"{url} sent more than 1 MB: that is not a license file.")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LicenseFetchError(f"{url} did not send a license: it is not UTF-8 text.") from None

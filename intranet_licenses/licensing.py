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


def latest(column):
    """A scalar subquery: ``column`` of the license in force (the newest installed row).

    For reading the license in the same statement as other figures (one round trip): the
    text read each time is the cache key of its verification (``check_text``), so every
    process sees a newly installed license at its next request, with nothing to invalidate.
    """
    return select(column).order_by(InstalledLicense.id.desc()).limit(1).scalar_subquery()


def current_columns() -> tuple:
    """The columns ``current_from`` needs, to add to another select."""
    return (
        latest(InstalledLicense.text).label("license_text"),
        latest(InstalledLicense.installed_at).label("license_installed_at"),
    )


def current_from(row, today: date) -> Current:
    """The license in force from a row mapping holding ``current_columns()``."""
    if row["license_text"] is None:
        return Current(check_text(None, today), None)
    return Current(check_text(row["license_text"], today), row["license_installed_at"])


def current(session, today: date) -> Current:
    """The license in force and its status on ``today`` (UTC)."""
    return current_from(session.execute(select(*current_columns())).one()._mapping, today)


def limits(session, today: date) -> dict[str, int | None]:
    """Seats per pool for admissions: None is Unlimited; every limit is 0 unless valid."""
    return limits_of(current(session, today).status)


def limits_of(status: Status) -> dict[str, int | None]:
    """The limits a license status grants: every limit is 0 unless it is valid."""
    if not status.valid:
        return dict.fromkeys(POOLS, 0)
    return {pool: status.license.pool_limit(pool) for pool in POOLS}


def installed_text(session) -> str | None:
    """The text of the license in force exactly as installed (valid or not), or None."""
    return session.scalar(select(latest(InstalledLicense.text)))


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

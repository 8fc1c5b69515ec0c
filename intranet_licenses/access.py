"""Who may do what: the role gate on the pages, and the login and per-request checks."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from flask import abort, redirect, render_template, request
from sqlalchemy import select

from .extension import adapter, config
from .models import AWAITING_LICENSE, BLOCKED_BY_DIRECTORY, Profile

SYSADMIN = "sysadmin"
PEOPLE_ADMIN = "people_admin"


def has_role(user, role: str) -> bool:
    ad = adapter()
    if user is None:
        return False
    if role == SYSADMIN:
        return bool(ad.is_sysadmin(user))
    if role == PEOPLE_ADMIN:
        return bool(ad.is_people_admin(user))
    raise ValueError(f"Unknown role {role!r}")


def role_required(role: str):
    """Send anonymous users to the host's login; answer 403 to users without ``role``."""

    def decorator(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            user = adapter().current_user()
            if user is None:
                return redirect(adapter().login_url(request.full_path))
            if not has_role(user, role):
                abort(403)
            return view(*args, **kwargs)

        wrapped.licenses_role = role
        return wrapped

    return decorator


def actor() -> str:
    """Who is acting, for the audit record."""
    user = adapter().current_user()
    return str(adapter().get(user, "username")) if user is not None else "anonymous"


@dataclass(frozen=True)
class LoginRefusal:
    """Why a person may not use the intranet now: ``kind`` is 'blocked' or 'waiting'."""

    kind: str
    message: str


def login_refusal(user) -> LoginRefusal | None:
    """None when ``user`` may use the intranet; else why not. Call it at login."""
    ad = adapter()
    if ad.get(user, "active"):
        return None
    profile = ad.session.get(Profile, ad.get(user, "id"))
    who = whom_to_ask()
    if profile is not None and profile.block_reason == AWAITING_LICENSE:
        return LoginRefusal(
            "waiting",
            "Your account is waiting for a free license. A People administrator activates "
            "waiting accounts, oldest first, when seats are free (a directory sync does it "
            f"too); nothing needs to be done on your side. If it is urgent, ask {who}.",
        )
    if profile is not None and profile.block_reason == BLOCKED_BY_DIRECTORY:
        return LoginRefusal(
            "blocked",
            "Your account is blocked because the company directory disabled it or no longer "
            f"lists it. Ask {who} if this is wrong.",
        )
    return LoginRefusal("blocked", f"Your account is blocked. Ask {who} if this is wrong.")


@dataclass(frozen=True)
class Contact:
    """Whom a blocked or waiting person should ask about licenses."""

    label: str
    email: str | None

    def __str__(self) -> str:
        return f"{self.label} ({self.email})" if self.email else self.label


def license_contact(session=None) -> Contact:
    """The Responsible person when one is set, else the built-in administrator account."""
    from . import notifications

    ad = adapter()
    session = session if session is not None else ad.session
    responsible = notifications.responsible_person(session)
    if responsible:
        return Contact("the person responsible for licenses", responsible)
    admin_id = session.execute(select(Profile.user_id).where(Profile.exempt)).scalar()
    admin = session.get(ad.model, admin_id) if admin_id is not None else None
    email = (ad.get(admin, "email") or None) if admin is not None else None
    return Contact("your intranet administrator", email)


def whom_to_ask(session=None) -> str:
    """'the person responsible for licenses (it@example.com)' or the administrator."""
    return str(license_contact(session))


def render_refusal(refusal: LoginRefusal):
    """The page a blocked or waiting person sees (status 403)."""
    return render_template(
        "licenses/blocked.html", refusal=refusal, contact=license_contact(adapter().session)
    ), 403


def check_request():
    """before_app_request: a blocked or waiting person cannot use the intranet."""
    if not config("CHECK_EVERY_REQUEST"):
        return None
    if request.endpoint is None or request.endpoint in config("OPEN_ENDPOINTS"):
        return None
    user = adapter().current_user()
    if user is None:
        return None
    refusal = login_refusal(user)
    if refusal is None:
        return None
    adapter().logout()
    return render_refusal(refusal)

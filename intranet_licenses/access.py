"""Who may do what: the role gate on the pages, and the login and per-request checks."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from flask import abort, redirect, render_template, request

from .extension import adapter, config
from .models import AWAITING_LICENSE, Profile

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
    if profile is not None and profile.block_reason == AWAITING_LICENSE:
        return LoginRefusal(
            "waiting",
            "Your account is waiting for a free license. It will be activated as soon as "
            "a seat is free; nothing needs to be done on your side.",
        )
    return LoginRefusal(
        "blocked", "Your account is blocked. Ask your intranet administrator if this is wrong."
    )


def render_refusal(refusal: LoginRefusal):
    """The page a blocked or waiting person sees (status 403)."""
    from . import notifications

    contact = notifications.responsible_person(adapter().session)
    return render_template("licenses/blocked.html", refusal=refusal, contact=contact), 403


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

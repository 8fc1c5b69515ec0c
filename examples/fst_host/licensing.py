"""All this host writes to mount intranet-licenses: its adapter and its login form."""

import uuid

import flask_security
from flask_security import current_user, logout_user, user_registered

from intranet_licenses import UserAdapter, login_refusal

from .models import User, db

SYSADMIN_ROLES = ("admin", "sysadmin")
PEOPLE_ADMIN_ROLES = ("admin", "people-admin")


class FstUsers(UserAdapter):
    """Flask-Security-Too's user model, as the extension sees it."""

    model = User
    surname_attr = "last_name"  # username, first_name, email and active keep their names
    created_at_attr = "create_datetime"
    last_login_at_attr = "last_login_at"  # filled by SECURITY_TRACKABLE
    login_endpoint = "security.login"
    email_required = True  # FST's email column is NOT NULL and UNIQUE
    unique_email = True

    def current_user(self):
        return current_user._get_current_object() if current_user.is_authenticated else None

    def is_sysadmin(self, user) -> bool:
        return any(user.has_role(role) for role in SYSADMIN_ROLES)

    def is_people_admin(self, user) -> bool:
        return any(user.has_role(role) for role in PEOPLE_ADMIN_ROLES)

    def new_user(self, **fields):
        # People > Add person: FST needs fs_uniquifier (datastore.create_user sets it).
        user = super().new_user(**fields)
        user.fs_uniquifier = uuid.uuid4().hex
        return user

    def logout(self) -> None:
        logout_user()


class LoginForm(flask_security.LoginForm):
    """FST already refuses inactive users; this says why (blocked, or waiting for a seat)."""

    def validate(self, **kwargs) -> bool:
        if super().validate(**kwargs):
            return True
        refusal = login_refusal(self.user) if self.user_authenticated else None
        if refusal is not None:
            self.ifield.errors[:] = [refusal.message]
        return False


@user_registered.connect
def take_the_seat_in_the_view(sender, user, **extra):
    """FST commits a registration after the response is made, where a refusal is a 500;
    flushing here checks the seat inside the view, so the extension's page says why."""
    db.session.flush()

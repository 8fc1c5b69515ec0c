"""All this host writes to mount intranet-licenses: its adapter and a few FAB overrides."""

from flask import current_app, flash, has_request_context
from flask_appbuilder.security.sqla.manager import SecurityManager
from flask_appbuilder.security.sqla.models import User
from flask_appbuilder.security.views import UserDBModelView
from flask_login import current_user, logout_user
from werkzeug.security import check_password_hash

from intranet_licenses import UserAdapter, last_refusal, login_refusal

SYSADMIN_ROLES = {"Admin", "Sysadmin"}
PEOPLE_ADMIN_ROLES = {"Admin", "People Admin"}


class FabUsers(UserAdapter):
    """Flask-AppBuilder's ab_user, as the extension sees it."""

    model = User
    surname_attr = "last_name"  # username, first_name, email and active keep their names
    created_at_attr = "created_on"
    last_login_at_attr = "last_login"
    email_required = True  # ab_user.email is NOT NULL and UNIQUE
    unique_email = True

    def current_user(self):
        return current_user._get_current_object() if current_user.is_authenticated else None

    def is_sysadmin(self, user) -> bool:
        return any(role.name in SYSADMIN_ROLES for role in user.roles)

    def is_people_admin(self, user) -> bool:
        return any(role.name in PEOPLE_ADMIN_ROLES for role in user.roles)

    def login_url(self, next_url: str) -> str:
        return current_app.appbuilder.get_url_for_login_with(next_url)

    def logout(self) -> None:
        logout_user()


class UserView(UserDBModelView):
    """FAB's user admin; its edit form says why a re-activation was refused."""

    @property
    def database_error_message(self):  # FAB flashes this when the edit's commit raises
        refusal = last_refusal(self.datamodel.session)
        return str(refusal) if refusal else "Database Error"


class LicensedSecurityManager(SecurityManager):
    userdbmodelview = UserView

    def add_user(self, *args, **kwargs):
        """FAB's add_user logs and returns False on any error: show the seat refusal."""
        user = super().add_user(*args, **kwargs)
        refusal = last_refusal(self.session) if user is False else None
        if refusal is not None and has_request_context():
            flash(str(refusal), "danger")
        return user

    def auth_user_db(self, username, password):
        """FAB refuses inactive users as a bad login; also say why (blocked or waiting)."""
        user = super().auth_user_db(username, password)
        found = self.find_user(username=username) if user is None else None
        if found and not found.active and check_password_hash(found.password or "", password):
            flash(login_refusal(found).message, "warning")
        return user

"""The extension's web forms (Flask-WTF, CSRF-protected)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import BooleanField, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional


class ConfirmForm(FlaskForm):
    """A button that changes something: only the CSRF token."""


class InstallLicenseForm(FlaskForm):
    license_file = FileField("License file")
    license_text = TextAreaField("Or paste the license text", validators=[Optional()])


class AddPersonForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=255)])
    first_name = StringField("First name", validators=[DataRequired(), Length(max=255)])
    surname = StringField("Surname", validators=[DataRequired(), Length(max=255)])
    email = StringField("Email", validators=[Optional(), Length(max=255)])
    area = SelectField("Area")
    readonly = BooleanField("Read-only")


class MoveForm(FlaskForm):
    area = SelectField("Area")
    readonly = BooleanField("Read-only")


# Notifications (issue 8) ------------------------------------------------------------------


class ResponsiblePersonForm(FlaskForm):
    """One address; checked by notifications.check_address, not by a WTForms validator."""

    email = StringField("Email address of the Responsible person", validators=[Length(max=1000)])

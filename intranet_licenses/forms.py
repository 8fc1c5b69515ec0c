"""The extension's web forms (Flask-WTF, CSRF-protected)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
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


class ImportForm(FlaskForm):
    """CSV upload of people (csv_import.py)."""

    csv_file = FileField("CSV file", validators=[FileRequired("Choose a CSV file to upload.")])

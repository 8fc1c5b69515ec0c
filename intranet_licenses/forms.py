"""The extension's web forms (Flask-WTF, CSRF-protected)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import (
    BooleanField,
    RadioField,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, Optional
from wtforms.widgets import CheckboxInput, ListWidget


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


# People export (issue 7) -----------------------------------------------------------------


class _CheckboxesField(SelectMultipleField):
    """Several ticks from a fixed list, shown as checkboxes (no JavaScript)."""

    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class ExportForm(FlaskForm):
    """The People export: optional columns, filters and the encoding."""

    columns = _CheckboxesField("Optional columns", validators=[Optional()])
    state = SelectField(
        "State",
        choices=[
            SelectChoice("all", "Everyone"),
            SelectChoice("active", "Active only"),
            SelectChoice("blocked", "Blocked only"),
        ],
        default="all",
    )
    area = SelectField("Area", default="")
    encoding = RadioField(
        "Encoding",
        choices=[
            SelectChoice("utf-8", "Plain UTF-8"),
            SelectChoice("utf-8-bom", "UTF-8 with a byte-order mark (for Excel)"),
        ],
        default="utf-8",
    )

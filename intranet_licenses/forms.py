"""The extension's web forms (Flask-WTF, CSRF-protected)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import (
    BooleanField,
    HiddenField,
    RadioField,
    SelectChoice,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
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


# Notifications (issue 8) ------------------------------------------------------------------


class ResponsiblePersonForm(FlaskForm):
    """One address; checked by notifications.check_address, not by a WTForms validator."""

    email = StringField("Email address of the Responsible person", validators=[Length(max=1000)])


# License requests (issue 9) ----------------------------------------------------------------

_POOL_CHOICES = [
    SelectChoice("intranet", "Intranet"),
    SelectChoice("extranet", "Extranet"),
    SelectChoice("readonly", "Read-only"),
]


class LicenseRequestForm(FlaskForm):
    """Checked by license_requests.check (one check for the form and the CLI)."""

    kind = RadioField(
        "What do you need?",
        choices=[
            SelectChoice("add", "More seats in a pool"),
            SelectChoice("move", "Move seats from one pool to another"),
        ],
        default="add",
        validate_choice=False,
    )
    # Text, not IntegerField: IntegerField takes "+5", "1_000" and other scripts' digits.
    seats = StringField("Number of seats (at least 5)", validators=[Length(max=50)])
    pool = SelectField("Pool", choices=_POOL_CHOICES, validate_choice=False)
    from_pool = SelectField("From pool", choices=_POOL_CHOICES, validate_choice=False)
    to_pool = SelectField("To pool", choices=_POOL_CHOICES, validate_choice=False)
    note = TextAreaField("Note for the vendor (optional)", validators=[Length(max=2000)])
    requester_name = StringField("Your name", validators=[Length(max=255)])
    requester_email = StringField("Your email", validators=[Length(max=1000)])
    #: One per form shown, so that a double click or a resubmitted page records one request.
    submission_key = HiddenField()


class ImportForm(FlaskForm):
    """CSV upload of people (csv_import.py)."""

    csv_file = FileField("CSV file", validators=[FileRequired("Choose a CSV file to upload.")])


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

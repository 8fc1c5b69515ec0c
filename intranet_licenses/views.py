"""The ``licenses`` blueprint: thin views that check a form, call a service and commit."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for

from . import access, licensing, people, seats
from .access import PEOPLE_ADMIN, SYSADMIN, role_required
from .extension import adapter, config
from .forms import AddPersonForm, ConfirmForm, InstallLicenseForm, MoveForm
from .models import BLOCK_REASONS, POOLS, utcnow

bp = Blueprint(
    "licenses",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
bp.before_app_request(access.check_request)


REASON_LABELS = {
    "admin": "Blocked by an administrator",
    "license": "Awaiting a license",
    "directory": "Blocked by the directory",
}


def _nav():
    """The extension's pages the current user may open, as (endpoint, label)."""
    user = adapter().current_user()
    items = []
    if access.has_role(user, SYSADMIN):
        items += [("licenses.license_page", "License"), ("licenses.summary", "Summary")]
    if access.has_role(user, PEOPLE_ADMIN):
        items.append(("licenses.people_page", "People"))
    return items


@bp.app_context_processor
def _template_globals():
    return {
        "licenses_base_template": config("BASE_TEMPLATE"),
        "licenses_nav": _nav,
        "reason_labels": REASON_LABELS,
    }


def _session():
    return adapter().session


def _area_choices():
    # SelectChoice, not (value, label) tuples: WTForms 3.3 deprecates tuples (a warning,
    # which the test suite turns into an error).
    from wtforms.fields.choices import SelectChoice

    return [SelectChoice(area, area) for area in seats.areas()]


# License and summary (sysadmin) ----------------------------------------------------------


@bp.get("/")
@role_required(SYSADMIN)
def license_page():
    session = _session()
    now = utcnow()
    current = licensing.current(session, now.date())
    return render_template(
        "licenses/license.html",
        current=current,
        sentence=licensing.validity_sentence(current),
        figures=seats.figures(session, now),
        form=InstallLicenseForm(),
    )


@bp.post("/install")
@role_required(SYSADMIN)
def install_license():
    form = InstallLicenseForm()
    if not form.validate_on_submit():
        flash("The form expired or was incomplete; please try again.", "error")
        return redirect(url_for(".license_page"))
    text = form.license_text.data or ""
    upload = form.license_file.data
    if upload:
        raw = upload.read(1024 * 1024)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            flash("The uploaded file is not a license: it is not UTF-8 text.", "error")
            return redirect(url_for(".license_page"))
    if not text.strip():
        flash("Choose a license file or paste the license text.", "error")
        return redirect(url_for(".license_page"))
    session = _session()
    try:
        licensing.install(session, text, actor=access.actor(), now=utcnow(), path="page")
    except licensing.LicenseRefused as refusal:
        session.commit()
        flash(str(refusal), "error")
        return redirect(url_for(".license_page"))
    session.commit()
    flash("The new license is installed.", "success")
    return redirect(url_for(".license_page"))


@bp.get("/summary")
@role_required(SYSADMIN)
def summary():
    session = _session()
    figures = seats.figures(session, utcnow())
    return render_template(
        "licenses/summary.html",
        users_line=seats.summary_sentence(figures),
        figures=figures,
        host_lines=adapter().summary_lines(),
    )


# People (People administrator) -----------------------------------------------------------


def _int_arg(name: str) -> int | None:
    value = request.args.get(name, "")
    return int(value) if value.isascii() and value.isdigit() else None


@bp.get("/people")
@role_required(PEOPLE_ADMIN)
def people_page():
    session = _session()
    filters = {
        "search": request.args.get("q", "").strip() or None,
        "state": request.args.get("state")
        if request.args.get("state") in ("active", "blocked")
        else None,
        "area": request.args.get("area") if request.args.get("area") in seats.areas() else None,
        "pool": request.args.get("pool") if request.args.get("pool") in POOLS else None,
        "reason": request.args.get("reason")
        if request.args.get("reason") in BLOCK_REASONS
        else None,
    }
    listing = people.page(
        session,
        after=_int_arg("after"),
        before=_int_arg("before"),
        size=config("PAGE_SIZE"),
        **filters,
    )
    add_form = AddPersonForm()
    add_form.area.choices = _area_choices()
    return render_template(
        "licenses/people.html",
        listing=listing,
        filters=filters,
        figures=seats.figures(session, utcnow()),
        areas=seats.areas(),
        pools=POOLS,
        reasons=BLOCK_REASONS,
        add_form=add_form,
        action_form=ConfirmForm(),
    )


def _back_to_people():
    return redirect(request.form.get("next") or url_for(".people_page"))


def _run(action, success: str):
    """Run one service call, commit, and flash the outcome in words."""
    session = _session()
    try:
        action(session)
    except seats.SeatError as refusal:
        session.commit()  # keeps the audit record of the refusal, nothing else changed
        flash(str(refusal), "error")
        return False
    session.commit()
    flash(success, "success")
    return True


@bp.post("/people/add")
@role_required(PEOPLE_ADMIN)
def add_person():
    form = AddPersonForm()
    form.area.choices = _area_choices()
    if not form.validate_on_submit():
        problems = "; ".join(
            f"{getattr(form, name).label.text}: {' '.join(errors)}"
            for name, errors in form.errors.items()
        )
        flash(f"The person was not added. {problems}", "error")
        return _back_to_people()
    _run(
        lambda session: seats.add_person(
            session,
            username=form.username.data,
            first_name=form.first_name.data,
            surname=form.surname.data,
            email=form.email.data,
            area=form.area.data,
            readonly=form.readonly.data,
            source="single",
            path="page",
            actor=access.actor(),
            now=utcnow(),
        ),
        f"{form.username.data.strip()} was added and is active.",
    )
    return _back_to_people()


def _person_action(user_id: int, service, success: str, **kwargs):
    if not ConfirmForm().validate_on_submit():
        flash("The form expired; please try again.", "error")
        return _back_to_people()

    def action(session):
        user = seats.get_person(session, user_id)
        service(session, user, actor=access.actor(), now=utcnow(), path="page", **kwargs)

    session = _session()
    name = _username(session, user_id)
    _run(action, success.format(name=name))
    return _back_to_people()


def _username(session, user_id: int) -> str:
    user = session.get(adapter().model, user_id)
    return adapter().get(user, "username") if user is not None else f"ID {user_id}"


@bp.post("/people/<int:user_id>/block")
@role_required(PEOPLE_ADMIN)
def block_person(user_id: int):
    return _person_action(user_id, seats.block, "{name} is blocked; their seat is free.")


@bp.post("/people/<int:user_id>/unblock")
@role_required(PEOPLE_ADMIN)
def unblock_person(user_id: int):
    return _person_action(user_id, seats.unblock, "{name} is active again.")


@bp.post("/people/<int:user_id>/move")
@role_required(PEOPLE_ADMIN)
def move_person(user_id: int):
    form = MoveForm()
    form.area.choices = _area_choices()
    if not form.validate_on_submit():
        flash("The move was not made: choose an area.", "error")
        return _back_to_people()
    return _person_action(
        user_id,
        seats.move,
        "{name} was moved.",
        area=form.area.data,
        readonly=form.readonly.data,
    )


@bp.route("/people/<int:user_id>/delete", methods=["GET", "POST"])
@role_required(PEOPLE_ADMIN)
def delete_person(user_id: int):
    session = _session()
    if request.method == "GET":
        user = session.get(adapter().model, user_id)
        if user is None:
            flash(f"There is no person with ID {user_id}; they may have been deleted.", "error")
            return redirect(url_for(".people_page"))
        return render_template(
            "licenses/delete.html",
            user_id=user_id,
            username=adapter().get(user, "username"),
            form=ConfirmForm(),
        )
    return _person_action(user_id, seats.delete, "{name} was deleted for good.")


@bp.post("/people/activate-waiting")
@role_required(PEOPLE_ADMIN)
def activate_waiting():
    if not ConfirmForm().validate_on_submit():
        flash("The form expired; please try again.", "error")
        return _back_to_people()
    session = _session()
    result = seats.activate_waiting(session, actor=access.actor(), now=utcnow(), path="page")
    session.commit()
    if result.activated:
        flash(
            f"Activated {len(result.activated)}: {', '.join(result.activated[:20])}"
            + (" ..." if len(result.activated) > 20 else "")
            + (f". Still waiting: {result.still_waiting}." if result.still_waiting else "."),
            "success",
        )
    elif result.still_waiting:
        flash(
            f"Nobody could be activated: {result.still_waiting} people wait and their pools "
            "have no free seat. Request more licenses, or block people who no longer need "
            "access.",
            "error",
        )
    else:
        flash("Nobody is waiting for a license.", "success")
    return _back_to_people()


# People export (issue 7) -----------------------------------------------------------------


def _export_form():
    from wtforms.fields.choices import SelectChoice

    from .export import OPTIONAL_COLUMNS
    from .forms import ExportForm

    form = ExportForm()
    form.columns.choices = [SelectChoice(name, label) for name, label in OPTIONAL_COLUMNS.items()]
    form.area.choices = [SelectChoice("", "Every area"), *_area_choices()]
    return form


@bp.route("/people/export", methods=["GET", "POST"])
@role_required(PEOPLE_ADMIN)
def export_people():
    """The export form; its answer is the CSV, streamed as it is written."""
    from flask import Response, stream_with_context

    from . import export

    form = _export_form()
    if request.method == "GET":
        form.columns.data = ["account_state"]
        return render_template("licenses/export.html", form=form)
    if not form.validate_on_submit():
        problems = "; ".join(
            f"{getattr(form, name).label.text}: {' '.join(errors)}"
            for name, errors in form.errors.items()
        )
        flash(f"Nothing was exported. {problems}", "error")
        return render_template("licenses/export.html", form=form), 400
    opts = export.options(
        columns=form.columns.data,
        state=form.state.data,
        area=form.area.data or None,
        bom=form.encoding.data == "utf-8-bom",
    )
    chunks = export.stream(opts)
    name = export.file_name(utcnow().date())
    # No Content-Length: the server sends the body chunked and, should the export fail
    # half-way, closes the connection without the final chunk, so the browser reports a
    # failed download instead of saving a short file as if it were complete.
    response = Response(stream_with_context(_logged(chunks)), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _logged(chunks):
    """Pass chunks through; log an export that fails after the response has started."""
    from .export import logger

    try:
        yield from chunks
    except Exception:
        logger.exception("The People export failed part-way; the download was cut off.")
        raise

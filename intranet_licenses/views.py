"""The ``licenses`` blueprint: thin views that check a form, call a service and commit."""

from __future__ import annotations

import functools
import json
import secrets
import time
import uuid
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, url_for
from flask_wtf.csrf import generate_csrf
from markupsafe import Markup, escape
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from werkzeug.exceptions import RequestEntityTooLarge

from . import access, csv_import, license_requests, licensing, notifications, people, reads, seats
from .access import PEOPLE_ADMIN, SYSADMIN, role_required
from .extension import adapter, config
from .forms import (
    AddPersonForm,
    ConfirmForm,
    ImportForm,
    InstallLicenseForm,
    LicenseRequestForm,
    MoveForm,
    ResponsiblePersonForm,
)
from .models import BLOCK_REASONS, POOLS, utcnow
from .people_rows import people_rows

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
        items += [
            ("licenses.license_page", "License"),
            ("licenses.summary", "Summary"),
            ("licenses.request_page", "Request licenses"),
        ]
    if access.has_role(user, PEOPLE_ADMIN):
        items.append(("licenses.people_page", "People"))
    return items


POOL_LABELS = {"intranet": "Intranet", "extranet": "Extranet", "readonly": "Read-only"}


@bp.app_template_filter("pool_label")
def _pool_label(pool: str) -> str:
    return POOL_LABELS.get(pool, pool)


def _csrf_field() -> Markup:
    """The hidden CSRF field of a small form written out in a template: the token FlaskForm
    checks when the form is posted (building a FlaskForm only to render its token cost a
    tenth of a page's time). Written once per request (the People page has three forms)."""
    field = g.get("_licenses_csrf_field")
    if field is None:
        field = g._licenses_csrf_field = _new_csrf_field()
    return field


def _new_csrf_field() -> Markup:
    if not current_app.config.get("WTF_CSRF_ENABLED", True):
        return Markup("")
    name = escape(current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token"))
    # An f-string of escaped values: Markup's % operator took a third of this function.
    return Markup(f'<input type="hidden" name="{name}" value="{escape(generate_csrf())}">')


@bp.app_context_processor
def _template_globals():
    return {
        "licenses_base_template": config("BASE_TEMPLATE"),
        "licenses_nav": _nav,
        "licenses_csrf_field": _csrf_field,
        "licenses_people_rows": people_rows,
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
    return _render_license()


def _render_license(responsible_form=None, responsible_problem=None, status: int = 200):
    """The License page; after a refused address, with what was typed and why."""
    session = _session()
    now = utcnow()
    reading = _reading(session, now, also=_license_page_columns())
    current, figures = reading.current, reading.figures
    # The page's forms are written out in the templates with the names of InstallLicenseForm
    # and ResponsiblePersonForm (building and rendering them field by field took a fifth of
    # the page's time), each with licenses_csrf_field().
    return render_template(
        "licenses/license.html",
        current=current,
        sentence=licensing.validity_sentence(current),
        figures=figures,
        fetch_url=config("FETCH_URL"),
        notify=notifications.page_info(session, reading.row),
        responsible_form=responsible_form,
        responsible_problem=responsible_problem,
        license_requests=license_requests.history_from(reading.row["license_requests"]),
    ), status


@functools.cache
def _license_page_columns() -> tuple:
    """What the License page reads with the seat figures, in the same statement: what it
    shows of notifications and the outbox, and the license requests (one statement instead
    of three; see json_rows)."""
    return (*notifications.page_info_columns(), license_requests.HISTORY_COLUMN)


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
    return _install(text, path="page", done="The new license is installed.")


def _install(text: str, *, path: str, done: str, refused: str = ""):
    """Install ``text``, commit (also a refusal's audit record), flash, back to the page."""
    session = _session()
    try:
        licensing.install(session, text, actor=access.actor(), now=utcnow(), path=path)
    except licensing.LicenseRefused as refusal:
        session.commit()
        flash(f"{refused}{refusal}", "error")
        return redirect(url_for(".license_page"))
    session.commit()
    flash(done, "success")
    return redirect(url_for(".license_page"))


@bp.post("/fetch")
@role_required(SYSADMIN)
def fetch_license():
    url = config("FETCH_URL")
    if not ConfirmForm().validate_on_submit() or not url:
        flash("No license server is configured (LICENSES_FETCH_URL).", "error")
        return redirect(url_for(".license_page"))
    try:
        text = licensing.fetch(url)
    except licensing.LicenseFetchError as problem:
        flash(f"{problem} The license in force was not changed.", "error")
        return redirect(url_for(".license_page"))
    return _install(
        text,
        path="fetch",
        done="A new license was fetched and installed.",
        refused="The fetched license was refused: ",
    )


@bp.get("/summary")
@role_required(SYSADMIN)
def summary():
    session = _session()
    figures = _reading(session, utcnow()).figures
    return render_template(
        "licenses/summary.html",
        users_line=seats.summary_sentence(figures),
        figures=figures,
        host_lines=adapter().summary_lines(),
    )


# People (People administrator) -----------------------------------------------------------


def _int_arg(name: str) -> int | None:
    value = request.args.get(name, "")
    if not (value.isascii() and value.isdigit() and len(value) < 11):
        return None
    return int(value) if int(value) < 2**31 else None


@bp.get("/people")
@role_required(PEOPLE_ADMIN)
def people_page():
    """The People page: the seat figures, the filter form and a page of people (adding one
    person is a page of its own, ``add_person``)."""
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
    paging = {
        "after": _int_arg("after"),
        "before": _int_arg("before"),
        "size": config("PAGE_SIZE"),
    }
    # Read with the figures: a search's count of matches, or the page of people itself.
    also, values = people.read_with(session, **paging, **filters)
    reading = _reading(session, utcnow(), also=also, params=values)
    listing = people.page(session, **paging, counted=reading.row, **filters)
    return render_template(
        "licenses/people.html",
        listing=listing,
        pages=_pages(listing),
        filters=filters,
        figures=reading.figures,
        areas=seats.areas(),
        pools=POOLS,
        reasons=BLOCK_REASONS,
        directory_configured=bool(config("LDAP_URL")),
    )


class _Pages(NamedTuple):
    previous: str | None
    next: str | None


#: The People page's filters, the query parameters its pager links keep.
_PEOPLE_FILTERS = ("q", "state", "area", "pool", "reason")


def _pages(listing: people.Page) -> _Pages:
    """The links to the previous and the next page: this request's filters, the cursor
    replaced (None at an end).

    Only the filters are kept: any other parameter could be one of url_for's own arguments
    (``?endpoint=x`` was a TypeError, ``?_method=POST`` a BuildError, ``?_external=1`` an
    absolute link)."""
    args = {name: request.args[name] for name in _PEOPLE_FILTERS if name in request.args}
    previous = following = None
    if listing.prev_before:
        previous = url_for(".people_page", **args, before=listing.prev_before)
    if listing.next_after:
        following = url_for(".people_page", **args, after=listing.next_after)
    return _Pages(previous, following)


def _back_to_people():
    """Back to the People page the form came from (only a path under this blueprint)."""
    return redirect(_back_to_people_target(request.form.get("next", "")))


def _back_to_people_target(target: str) -> str:
    """``target`` when it is a path under the People page with no control character (a line
    break in a Location header is a 500 after the commit), else the People page itself."""
    people = url_for(".people_page")
    parts = urlsplit(target)
    unsafe = "\\" in target or not target.isprintable()
    # A dot segment ("/people/../../logout", also as %2e%2e) leaves the page in the browser.
    unsafe = unsafe or bool({".", ".."} & set(unquote(parts.path).split("/")))
    if parts.scheme or parts.netloc or not target.startswith(people) or unsafe:
        target = people
    return target


def _run(action, success: str):
    """Run one service call, commit, and flash the outcome in words."""
    session = _session()
    try:
        action(session)
        session.commit()
    except seats.SeatError as refusal:
        session.commit()  # keeps the audit record of the refusal, nothing else changed
        flash(_refusal_message(refusal), "error")
        return False
    except IntegrityError:
        # Another request wrote the same person at the same moment (a double click).
        session.rollback()
        flash(
            "Nothing was changed: someone else changed this person at the same moment. "
            "Reload the page to see the current state.",
            "error",
        )
        return False
    flash(success, "success")
    return True


def _render_add(add_form=None, add_problem=None, status: int = 200):
    """The "Add one person" page; after a refused addition, with what was typed and why."""
    return render_template(
        "licenses/add.html",
        figures=seats.figures(_session(), utcnow()),
        areas=seats.areas(),
        add_form=add_form,
        add_problem=add_problem,
        next_url=_back_to_people_target(request.values.get("next", "")),
    ), status


@bp.route("/people/add", methods=["GET", "POST"])
@role_required(PEOPLE_ADMIN)
def add_person():
    """GET: the "Add one person" page (linked from the People page); POST: the addition."""
    if request.method == "GET":
        return _render_add()
    form = AddPersonForm()
    form.area.choices = _area_choices()
    if not form.validate_on_submit():
        if "csrf_token" in form.errors:
            problem = "The form expired; please send it again."
        else:
            problem = "The person was not added. " + "; ".join(
                f"{getattr(form, name).label.text}: {' '.join(errors)}"
                for name, errors in form.errors.items()
            )
        return _render_add(form, problem, 400)
    session = _session()
    try:
        seats.add_person(
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
        )
        session.commit()
    except seats.SeatError as refusal:
        session.commit()  # keeps the audit record of the refusal, nothing else changed
        return _render_add(form, _refusal_message(refusal), 409)
    except IntegrityError:  # the same username added at the same moment (a double click)
        session.rollback()
        problem = f"{form.username.data.strip()} was added at the same moment by someone else."
        return _render_add(form, problem, 409)
    flash(f"{form.username.data.strip()} was added and is active.", "success")
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
    try:
        return adapter().get(seats.get_person(session, user_id), "username")
    except seats.PersonError:
        return f"ID {user_id}"


@bp.post("/people/<int:user_id>/block")
@role_required(PEOPLE_ADMIN)
def block_person(user_id: int):
    return _person_action(user_id, seats.block, "{name} is blocked; their seat is free.")


@bp.post("/people/<int:user_id>/unblock")
@role_required(PEOPLE_ADMIN)
def unblock_person(user_id: int):
    return _person_action(user_id, seats.unblock, "{name} is active again.")


@bp.route("/people/<int:user_id>/move", methods=["GET", "POST"])
@role_required(PEOPLE_ADMIN)
def move_person(user_id: int):
    """GET: the person's own Move page (area, read-only); POST: the move."""
    form = MoveForm()
    form.area.choices = _area_choices()
    if request.method == "GET":
        session = _session()
        try:
            user = seats.get_person(session, user_id)
            profile = seats.profile_of(session, user)
        except seats.PersonError as problem:
            flash(str(problem), "error")
            return redirect(url_for(".people_page"))
        form.area.data = profile.area
        form.readonly.data = profile.readonly
        return render_template(
            "licenses/move.html",
            user_id=user_id,
            username=adapter().get(user, "username"),
            profile=profile,
            form=form,
            next_url=_back_to_people_target(request.args.get("next", "")),
        )
    if not form.validate_on_submit():
        if "csrf_token" in form.errors:
            flash("The form expired; please try again.", "error")
        else:
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
        try:
            user = seats.get_person(session, user_id)
        except seats.PersonError as problem:
            flash(str(problem), "error")
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


# Directory sync (issue 6) ---------------------------------------------------------------


@bp.post("/people/sync-directory")
@role_required(PEOPLE_ADMIN)
def sync_directory():
    """ "Sync now": read the directory with the LICENSES_LDAP_* settings and show the report."""
    from . import directory

    if not ConfirmForm().validate_on_submit():
        flash("The form expired; please try again.", "error")
        return redirect(url_for(".people_page"))
    session = _session()
    now = utcnow()
    try:
        settings = directory.settings_from_config()
        report = directory.sync(session, settings, actor=access.actor(), now=now, path="directory")
    except directory.DirectoryError as exc:
        session.commit()  # only the audit record of the failed attempt
        return render_template("licenses/sync_report.html", report=None, error=str(exc))
    session.commit()
    return render_template(
        "licenses/sync_report.html",
        report=report,
        error=None,
        figures=seats.figures(session, now),
    )


# Notifications: the Responsible person (issue 8) -------------------------------------------


#: The pages that show the seat figures: they notice the license state from the statement
#: that reads the figures (``_reading``), one statement fewer on each of these pages.
_FIGURE_PAGES = frozenset({"licenses.license_page", "licenses.summary", "licenses.people_page"})


@bp.before_request
def _notice_license_state():
    """An extension page reads the license: notice once if it is no longer valid."""
    if request.endpoint == "licenses.static" or _shows_figures():
        return
    session = _session()
    if notifications.notice_license_state(session, utcnow()):
        session.commit()


def _shows_figures() -> bool:
    """True when this request is a figure page its user may see: it notices from there."""
    if request.endpoint not in _FIGURE_PAGES:
        return False
    role = current_app.view_functions[request.endpoint].licenses_role
    return access.has_role(adapter().current_user(), role)


def _reading(session, now, also: tuple = (), params=None) -> seats.Reading:
    """The license, the seat figures and the license state last seen (and ``also``, with
    its bound ``params``), in one statement; a license no longer valid is noticed from it,
    as on every other page."""
    conn = reads.connection(session)
    reading = seats.license_and_figures(session, now, also, params, conn=conn)
    read = (reading.current, reading.license_state_seen)
    if notifications.notice_license_state(session, now, read):
        session.commit()
        # The notice may have opened episodes and queued mail: show them (once per change).
        conn = reads.connection(session)  # the session's was given back at the commit
        reading = seats.license_and_figures(session, now, also, params, conn=conn)
    return reading


@bp.post("/responsible-person")
@role_required(SYSADMIN)
def set_responsible_person():
    form = ResponsiblePersonForm()
    if not form.validate_on_submit():
        flash("The form expired or the address is too long; please try again.", "error")
        return redirect(url_for(".license_page"))
    session = _session()
    try:
        old, new = notifications.set_responsible_person(
            session, form.email.data, actor=access.actor(), now=utcnow(), path="page"
        )
    except notifications.AddressError as problem:
        return _render_license(form, f"The Responsible person was not changed. {problem}", 400)
    session.commit()
    if old == new:
        flash(f"The Responsible person stays {new}.", "success")
    else:
        flash(f"The Responsible person is now {new} (was {old or 'nobody'}).", "success")
    return redirect(url_for(".license_page"))


# License requests (issue 9) ----------------------------------------------------------------


def _refusal_message(refusal):
    """The refusal in words; for a sysadmin, with a link to a pre-filled license request."""
    if not isinstance(refusal, seats.SeatLimitExceeded) or not access.has_role(
        adapter().current_user(), SYSADMIN
    ):
        return str(refusal)
    needed = max(refusal.shortfall, license_requests.MIN_SEATS)
    link = url_for(".request_page", pool=refusal.pool, seats=needed)
    return Markup('{} <a href="{}">Request {} more {} seats</a>.').format(
        str(refusal), link, needed, refusal.pool
    )


def _request_form_defaults(form: LicenseRequestForm) -> None:
    """Pre-fill a new form: from a refusal or the email (?pool=&seats=), and the requester."""
    args = request.args
    if args.get("kind") in ("add", "move"):
        form.kind.data = args["kind"]
    for name, arg in (("pool", "pool"), ("from_pool", "from"), ("to_pool", "to")):
        if args.get(arg) in POOLS:
            getattr(form, name).data = args[arg]
    if args.get("seats", "").isascii() and args.get("seats", "").isdigit():
        form.seats.data = args["seats"]
    user = adapter().current_user()
    ad = adapter()
    name = " ".join(part for part in (ad.get(user, "first_name"), ad.get(user, "surname")) if part)
    form.requester_name.data = name or str(ad.get(user, "username"))
    form.requester_email.data = ad.get(user, "email") or ""
    form.submission_key.data = uuid.uuid4().hex


def _render_request_form(form, status: int = 200):
    session = _session()
    return render_template(
        "licenses/request.html",
        form=form,
        figures=seats.figures(session, utcnow()),
        min_seats=license_requests.MIN_SEATS,
        max_seats=config("MAX_REQUEST_SEATS"),
    ), status


@bp.route("/request", methods=["GET", "POST"])
@role_required(SYSADMIN)
def request_page():
    form = LicenseRequestForm()
    if request.method == "GET":
        _request_form_defaults(form)
        return _render_request_form(form)
    if not form.validate_on_submit():
        if "csrf_token" in form.errors:
            flash(
                "The form expired while it was open, so nothing was sent. Your entries are "
                "kept: check them and send the request again.",
                "error",
            )
        else:
            flash(
                "The request was not sent: "
                + "; ".join(
                    f"{getattr(form, name).label.text}: {' '.join(errors)}"
                    for name, errors in form.errors.items()
                ),
                "error",
            )
        return _render_request_form(form, 400)
    session = _session()
    now = utcnow()
    try:
        draft = license_requests.check(
            session,
            kind=form.kind.data,
            seats=form.seats.data,
            pool=form.pool.data,
            from_pool=form.from_pool.data,
            to_pool=form.to_pool.data,
            note=form.note.data,
            requester_name=(form.requester_name.data or "").strip() or access.actor(),
            requester_email=form.requester_email.data,
            now=now,
        )
        sent = license_requests.submit(
            session,
            draft,
            actor=access.actor(),
            now=now,
            path="page",
            key=(form.submission_key.data or "").strip()[:64] or None,
        )
    except license_requests.RequestError as problem:
        session.rollback()
        flash(f"The request was not sent. {problem}", "error")
        return _render_request_form(form, 400)
    except license_requests.AlreadySent as already:
        session.rollback()
        flash(
            f"{already} Nothing was sent twice; its status is {already.request.status}.",
            "success",
        )
        return redirect(url_for(".license_page", _anchor="requests-heading"))
    session.commit()
    copy = notifications.responsible_person(session)
    flash(
        f"Request #{sent.id} is recorded and queued for {config('VENDOR_EMAIL')}: "
        f"{license_requests.describe(sent)}."
        + (f" A copy goes to the Responsible person ({copy})." if copy else "")
        + " Emails below shows when the mail server has taken it.",
        "success",
    )
    return redirect(url_for(".license_page", _anchor="requests-heading"))


def _request_status(request_id: int, status: str, done: str):
    if not ConfirmForm().validate_on_submit():
        flash("The form expired; please try again.", "error")
        return redirect(url_for(".license_page"))
    session = _session()
    try:
        license_requests.set_status(
            session, request_id, status, actor=access.actor(), now=utcnow(), path="page"
        )
    except license_requests.RequestError as problem:
        session.rollback()
        flash(str(problem), "error")
        return redirect(url_for(".license_page", _anchor="requests-heading"))
    session.commit()
    flash(done.format(id=request_id), "success")
    return redirect(url_for(".license_page", _anchor="requests-heading"))


@bp.post("/request/<int(max=2147483647):request_id>/cancel")
@role_required(SYSADMIN)
def cancel_request(request_id: int):
    return _request_status(request_id, "cancelled", "Request #{id} is cancelled.")


@bp.post("/request/<int(max=2147483647):request_id>/acknowledge")
@role_required(SYSADMIN)
def acknowledge_request(request_id: int):
    return _request_status(
        request_id, "acknowledged", "Request #{id} is marked as acknowledged by the vendor."
    )


# Refusals escaping a host's own views ----------------------------------------------------


@bp.app_errorhandler(seats.SeatError)
def seat_refused(error):
    """A host view whose user write the safety net refused: say why, instead of a 500.

    The host's own handler for ``SeatError`` (registered after ``init_app``) takes over.
    """
    adapter().session.rollback()
    return render_template("licenses/refused.html", message=str(error)), 409


# CSV import (People administrator) -------------------------------------------------------
# The upload is kept server-side in the instance folder under a random token (never sent
# back through the browser), bound to the person who uploaded it, until it is applied,
# discarded, or older than a day. See README "Importing people from CSV".


def _import_form_page(form=None, status=200):
    return (
        render_template(
            "licenses/import.html",
            form=form or ImportForm(),
            figures=seats.figures(_session(), utcnow()),
            max_size=csv_import.size_text(config("MAX_UPLOAD_BYTES")),
        ),
        status,
    )


def _stored_upload(token: str):
    """(csv path, metadata) of the current user's upload ``token``, or None."""
    paths = csv_import.upload_paths(current_app.instance_path, token)
    if paths is None:
        return None
    csv_path, meta_path = paths
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("user") != access.actor() or not csv_path.exists():
        return None
    return csv_path, meta


def _discard_upload(token: str) -> None:
    paths = csv_import.upload_paths(current_app.instance_path, token)
    for path in paths or ():
        path.unlink(missing_ok=True)


def _upload_gone():
    flash(
        "That upload is no longer available: it was applied or discarded, or is more than a "
        "day old. Upload the file again.",
        "error",
    )
    return redirect(url_for(".import_page"))


@bp.get("/people/import")
@role_required(PEOPLE_ADMIN)
def import_page():
    return _import_form_page()


@bp.post("/people/import")
@role_required(PEOPLE_ADMIN)
def import_upload():
    limit = config("MAX_UPLOAD_BYTES")
    request.max_content_length = limit + 64 * 1024  # the form's other fields and framing
    try:
        form = ImportForm()  # reads the request body
        valid = form.validate_on_submit()
    except RequestEntityTooLarge:
        flash(
            f"The file is larger than {csv_import.size_text(limit)}, the largest file accepted. "
            "Split it into smaller files, or ask the administrator to raise "
            "LICENSES_MAX_UPLOAD_BYTES.",
            "error",
        )
        return redirect(url_for(".import_page"))
    if not valid:
        problems = " ".join(e for errors in form.errors.values() for e in errors)
        flash(f"Nothing was uploaded. {problems}", "error")
        return redirect(url_for(".import_page"))
    upload = form.csv_file.data
    name = (upload.filename or "upload.csv").replace("\\", "/").rsplit("/", 1)[-1][:200]
    instance = current_app.instance_path
    csv_import.clean_uploads(instance, time.time())
    token = secrets.token_urlsafe(24)
    csv_path, meta_path = csv_import.upload_paths(instance, token)
    try:
        csv_import.save_stream(upload.stream, csv_path, limit, name)
        csv_import.CsvPeople(csv_path, name).close()  # the header is checked at once
    except csv_import.ImportFileError as problem:
        csv_path.unlink(missing_ok=True)
        flash(str(problem), "error")
        return redirect(url_for(".import_page"))
    meta_path.write_text(
        json.dumps({"name": name, "user": access.actor(), "uploaded_at": utcnow().isoformat()}),
        encoding="utf-8",
    )
    return redirect(url_for(".import_preview", token=token))


@bp.get("/people/import/<token>")
@role_required(PEOPLE_ADMIN)
def import_preview(token: str):
    stored = _stored_upload(token)
    if stored is None:
        return _upload_gone()
    csv_path, meta = stored
    try:
        preview = csv_import.preview(_session(), csv_path, name=meta["name"], now=utcnow())
    except csv_import.ImportFileError as problem:
        _discard_upload(token)
        flash(str(problem), "error")
        return redirect(url_for(".import_page"))
    return render_template(
        "licenses/import_preview.html",
        preview=preview,
        figures=preview.figures,
        token=token,
        form=ConfirmForm(),
    )


@bp.post("/people/import/<token>/apply")
@role_required(PEOPLE_ADMIN)
def import_apply(token: str):
    if not ConfirmForm().validate_on_submit():
        flash("The form expired; please try again.", "error")
        return redirect(url_for(".import_preview", token=token))
    stored = _stored_upload(token)
    if stored is None:
        return _upload_gone()
    csv_path, meta = stored
    # Claimed for this click alone (an atomic rename): a second click finds it gone and says
    # so, rather than failing on the first click's usernames. Put back unless applied.
    claimed = csv_import.claim_upload(csv_path)
    if claimed is None:
        return _upload_gone()
    try:
        return _apply_claimed(token, claimed, meta)
    finally:
        csv_import.release_upload(claimed, csv_path)


def _apply_claimed(token: str, csv_path, meta: dict):
    session = _session()
    try:
        result = csv_import.apply(
            session,
            csv_path,
            name=meta["name"],
            actor=access.actor(),
            now=utcnow(),
            path="page",
        )
        session.commit()  # the people, or (after a refusal) only the audit record
    except FileNotFoundError:  # a second click: the first one applied and removed it
        session.rollback()
        return _upload_gone()
    except csv_import.ImportFileError as problem:
        session.rollback()
        _discard_upload(token)
        flash(str(problem), "error")
        return redirect(url_for(".import_page"))
    except SQLAlchemyError:
        session.rollback()
        flash(
            "Nothing was imported: the database reported an error while saving, and the data "
            "is as it was before. Try again; if it happens again, tell the intranet's "
            "administrator.",
            "error",
        )
        return redirect(url_for(".import_preview", token=token))
    if result.ok:
        _discard_upload(token)
    return render_template(
        "licenses/import_result.html",
        result=result,
        token=token,
        form=ConfirmForm(),
        figures=seats.figures(session, utcnow()),
    )


@bp.post("/people/import/<token>/discard")
@role_required(PEOPLE_ADMIN)
def import_discard(token: str):
    if ConfirmForm().validate_on_submit() and _stored_upload(token) is not None:
        _discard_upload(token)
        flash("The upload was discarded; nothing was imported.", "success")
    return redirect(url_for(".import_page"))


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
        # Reached from the People page: start from its filters.
        if request.args.get("state") in ("active", "blocked"):
            form.state.data = request.args["state"]
        if request.args.get("area") in seats.areas():
            form.area.data = request.args["area"]
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

"""End to end in headless Chromium: every page as a person sees it, with screenshots and axe."""

from __future__ import annotations

import json
import re

import pytest
from browser_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DEMO_PASSWORD,
    SCREENSHOTS,
    LiveServer,
    copy_database,
    require_chromium,
    seeded_database,
)
from conftest import person_state, usage
from playwright.sync_api import expect, sync_playwright

import wsgi

pytestmark = pytest.mark.browser


@pytest.fixture(scope="session")
def browser_config():
    return {
        "TESTING": True,
        "SECRET_KEY": "browser-secret",
        "DEMO_PASSWORD_METHOD": "pbkdf2:sha256:1000",
        "LICENSES_SITE_NAME": "intranet.example.com",
    }


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory, browser_config):
    folder = tmp_path_factory.mktemp("browser-demo")
    return folder, seeded_database(folder, browser_config)


@pytest.fixture
def live(tmp_path, demo_template, browser_config):
    folder, template = demo_template
    path = copy_database(template, tmp_path)
    app = wsgi.create_app(
        {**browser_config, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{path}"},
        instance_path=str(folder / "instance"),
    )
    server = LiveServer(app)
    yield server
    server.stop()
    with app.app_context():
        wsgi.dispose_engines()


@pytest.fixture(scope="session")
def browser():
    require_chromium()

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def log_in(page, live, username):
    page.goto(f"{live.url}/login")
    page.get_by_label("Username", exact=True).fill(username)
    page.get_by_label("Password", exact=True).fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Log in").click()


def screenshot(page, name):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def axe_findings(page) -> list[str]:
    """Serious or critical axe-core findings on the current page (axe from its package)."""
    from axe_playwright_python.base import AXE_FILE_PATH

    page.add_script_tag(path=str(AXE_FILE_PATH))
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def flash_text(page) -> str:
    """The messages shown after the last action (waits for the next page to show them)."""
    page.locator(".lic-message").first.wait_for()
    return " ".join(page.locator(".lic-message").all_inner_texts())


@pytest.mark.parametrize(
    ("username", "allowed", "forbidden"),
    [
        ("admin", ["/admin/licenses/", "/admin/licenses/people"], []),
        ("sysadmin", ["/admin/licenses/", "/admin/licenses/summary"], ["/admin/licenses/people"]),
        ("peopleadmin", ["/admin/licenses/people"], ["/admin/licenses/"]),
        ("jennifer", [], ["/admin/licenses/", "/admin/licenses/people"]),
    ],
)
def test_each_demo_role_logs_in_and_sees_its_pages(live, page, username, allowed, forbidden):
    log_in(page, live, username)
    expect(page.get_by_text(f"Signed in as {username}")).to_be_visible()
    for path in allowed:
        response = page.goto(live.url + path)
        assert response.status == 200
    for path in forbidden:
        response = page.goto(live.url + path)
        assert response.status == 403
        expect(
            page.get_by_role("heading", name="You do not have access to this page")
        ).to_be_visible()


def test_the_license_page_view_all_and_install_by_upload(live, page, tmp_path):
    log_in(page, live, "sysadmin")
    page.goto(f"{live.url}/admin/licenses/")
    status = page.locator(".lic-sentence").inner_text()
    assert re.fullmatch(
        r"License is valid\. Last updated on: \d{4}-\d{2}-\d{2}\. License expires: Never", status
    )
    expect(page.get_by_text("53 of 70 in use")).to_be_visible()
    all_fields = page.locator("details.lic-all-fields table")
    expect(all_fields).to_be_hidden()
    page.get_by_text("View all").click()
    expect(all_fields).to_be_visible()
    expect(page.get_by_role("row", name="CRM_ALLOWED Yes")).to_be_visible()
    assert axe_findings(page) == []
    screenshot(page, "license")

    # Issue a license with more seats with the demo's vendor key, then upload it.
    runner = live.app.test_cli_runner()
    issued = tmp_path / "bigger.lic"
    result = runner.invoke(
        args=["licenses", "issue", "--out", str(issued), "--set", "MAX_USERS=90"]
    )
    assert result.exit_code == 0, result.output
    page.get_by_label("License file").set_input_files(str(issued))
    page.get_by_role("button", name="Install license").click()
    assert "The new license is installed." in flash_text(page)
    expect(page.get_by_text("53 of 90 in use")).to_be_visible()

    # A changed file is refused in words and the license in force stays.
    issued.write_text(issued.read_text().replace("MAX_USERS: 90", "MAX_USERS: 900"))
    page.get_by_label("License file").set_input_files(str(issued))
    page.get_by_role("button", name="Install license").click()
    assert "License signature is not valid" in flash_text(page)
    expect(page.get_by_text("53 of 90 in use")).to_be_visible()


def test_the_summary_reads_like_design_md(live, page):
    log_in(page, live, "sysadmin")
    page.goto(f"{live.url}/admin/licenses/summary")
    text = page.locator(".lic-summary").inner_text()
    assert "Number of Users 58 (53 in intranet area), excluding the administrator account" in text
    assert "Number of Documents 93 (98 including versions)" in text
    assert axe_findings(page) == []
    screenshot(page, "summary")


def test_people_search_filter_block_unblock_delete_add_activate(live, page):
    log_in(page, live, "peopleadmin")
    page.goto(f"{live.url}/admin/licenses/people")
    assert axe_findings(page) == []
    screenshot(page, "people")

    page.get_by_label("Search").fill("JENN")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.lic-people tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("jennifer")

    page.get_by_role("button", name="Block jennifer").click()
    assert "jennifer is blocked; their seat is free." in flash_text(page)
    assert person_state(live.app, "jennifer")[0] is False

    page.goto(f"{live.url}/admin/licenses/people")
    page.get_by_label("State").select_option("blocked")
    page.get_by_label("Block reason").select_option("license")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("table.lic-people tbody tr")).to_have_count(2)

    page.get_by_role("button", name="Activate waiting").click()
    assert "Activated 2" in flash_text(page)
    assert usage(live.app)["extranet"] == 6

    # Fill the intranet pool, then unblocking jennifer is refused with the reason shown.
    runner = live.app.test_cli_runner()
    for number in range(18):
        result = runner.invoke(
            args=["licenses", "people", "add", f"filler{number}", "--first-name", "F",
                  "--surname", "Iller", "--email", f"f{number}@example.com"]
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    page.goto(f"{live.url}/admin/licenses/people?q=jennifer")
    page.get_by_role("button", name="Unblock jennifer").click()
    message = flash_text(page)
    assert "No free seat in the intranet pool: 70 of 70 seats are in use" in message
    assert person_state(live.app, "jennifer")[0] is False

    # Delete asks for confirmation first.
    page.goto(f"{live.url}/admin/licenses/people?q=filler0")
    page.get_by_role("link", name="Delete filler0").click()
    expect(page.get_by_text("It cannot be undone.")).to_be_visible()
    assert axe_findings(page) == []
    page.get_by_role("button", name="Delete filler0 permanently").click()
    assert "filler0 was deleted for good." in flash_text(page)
    assert person_state(live.app, "filler0") is None

    # Add one person into the seat the deletion freed, on the page the People page links to.
    page.get_by_role("link", name="Add one person…").click()
    expect(page.get_by_role("heading", name="Add one person")).to_be_visible()
    assert axe_findings(page) == []
    page.get_by_label("Username").fill("new.colleague")
    page.get_by_label("First name").fill("Nóra")
    page.get_by_label("Surname").fill("O'Neill")
    page.get_by_label("Email").fill("nora@example.com")
    page.get_by_role("button", name="Add person").click()
    assert "new.colleague was added and is active." in flash_text(page)
    expect(page.get_by_role("heading", name="People")).to_be_visible()  # back to the list


def test_moving_a_person_from_their_own_move_page(live, page):
    log_in(page, live, "peopleadmin")
    page.goto(f"{live.url}/admin/licenses/people?q=jennifer")
    page.get_by_role("link", name="Move jennifer").click()
    expect(page.get_by_role("heading", name="Move jennifer")).to_be_visible()
    assert axe_findings(page) == []
    expect(page.get_by_label("Area")).to_have_value("primary")
    page.get_by_label("Area").select_option("partners")
    page.get_by_role("button", name="Move jennifer").click()
    assert "jennifer was moved." in flash_text(page)
    assert page.url.endswith("/admin/licenses/people?q=jennifer")
    assert person_state(live.app, "jennifer")[:3] == (True, "partners", "extranet")


def test_a_waiting_user_sees_why_at_login(live, page):
    with live.app.app_context():
        from intranet_licenses.models import Profile

        waiting = wsgi.db.session.scalar(
            wsgi.db.select(Profile.user_id).where(Profile.block_reason == "license")
        )
        username = wsgi.db.session.get(wsgi.User, waiting).username
    log_in(page, live, username)
    expect(
        page.get_by_role("heading", name="Your account is waiting for a license")
    ).to_be_visible()
    expect(page.get_by_text("Your account is waiting for a free license.")).to_be_visible()
    assert axe_findings(page) == []
    screenshot(page, "waiting")


def test_the_pages_read_at_phone_width(live, browser):
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    log_in(page, live, "admin")
    for path, name in [("/admin/licenses/", "license-390"), ("/admin/licenses/people", None)]:
        page.goto(live.url + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        if name:
            screenshot(page, name)
        assert width <= 400, f"{path} scrolls sideways at 390 px ({width} px wide)"
    context.close()


def test_login_page_is_accessible(live, page):
    page.goto(f"{live.url}/login")
    assert axe_findings(page) == [], json.dumps(axe_findings(page))


def test_set_the_responsible_person(live, page):
    log_in(page, live, "sysadmin")
    page.goto(f"{live.url}/admin/licenses/")
    field = page.get_by_label("Email address of the Responsible person")
    field.fill("Licenses <it@example.com>")
    page.get_by_role("button", name="Save").click()
    assert field.evaluate("input => input.validity.valid") is False  # the browser says so
    # Without the browser's check (novalidate), the server refuses it in words.
    field.evaluate("input => input.form.noValidate = true")
    page.get_by_role("button", name="Save").click()
    assert "The Responsible person was not changed." in flash_text(page)
    field = page.get_by_label("Email address of the Responsible person")
    expect(field).to_have_value("Licenses <it@example.com>")  # what was typed stays
    field.fill("it-licenses@example.com")
    page.get_by_role("button", name="Save").click()
    assert "The Responsible person is now it-licenses@example.com" in flash_text(page)
    with live.app.app_context():
        from intranet_licenses import notifications

        assert notifications.responsible_person(wsgi.db.session) == "it-licenses@example.com"
    assert axe_findings(page) == []


def test_request_licenses_with_a_refused_seat_number_then_a_good_one(live, page):
    log_in(page, live, "sysadmin")
    page.goto(f"{live.url}/admin/licenses/request")
    assert axe_findings(page) == []
    screenshot(page, "request")
    seats_field = page.get_by_label("Number of seats (at least 5)")
    seats_field.fill("+5")
    page.get_by_role("button", name="Send the request").click()
    message = flash_text(page)
    assert "The request was not sent" in message
    with live.app.app_context():
        from intranet_licenses.models import LicenseRequest

        assert wsgi.db.session.scalar(wsgi.db.select(wsgi.db.func.count(LicenseRequest.id))) == 0
    page.get_by_label("Number of seats (at least 5)").fill("25")
    page.get_by_role("button", name="Send the request").click()
    assert "25" in flash_text(page)
    with live.app.app_context():
        assert wsgi.db.session.scalar(wsgi.db.select(wsgi.db.func.count(LicenseRequest.id))) == 1


def test_upload_a_csv_through_preview_and_apply(live, page, tmp_path):
    upload = tmp_path / "new-staff.csv"
    upload.write_bytes(
        "\ufeffUsername;First name;Surname;Email\r\n"
        "amelie.roux;Amélie;Roux;amelie@example.com\r\n"
        "sean.obrien;Seán;O'Brien;sean@example.com\r\n"
        "JENNIFER;Jennifer;Again;j2@example.com\r\n"
        "bad.mail;Bad;Mail;not-an-address\r\n".encode()
    )
    log_in(page, live, "peopleadmin")
    page.goto(f"{live.url}/admin/licenses/people")
    page.get_by_role("link", name="Import people from CSV…").click()
    assert axe_findings(page) == []
    page.get_by_label("CSV file").set_input_files(str(upload))
    page.get_by_role("button", name="Upload and preview").click()
    expect(page.get_by_role("heading", name="Preview of new-staff.csv")).to_be_visible()
    preview = page.locator("main").inner_text()
    assert re.search(r"\n4\tJENNIFER\t.*already exists", preview), preview
    assert re.search(r"\n5\tbad\.mail\t'not-an-address' is not a valid email address", preview)
    assert person_state(live.app, "amelie.roux") is None  # nothing written yet
    assert axe_findings(page) == []
    screenshot(page, "import-preview")
    page.get_by_role("button", name="Apply: create 2 people").click()
    expect(page.get_by_role("heading", name="Created")).to_be_visible()
    assert person_state(live.app, "amelie.roux")[:3] == (True, "primary", "intranet")
    assert person_state(live.app, "sean.obrien")[0] is True
    assert usage(live.app)["intranet"] == 55


def test_download_the_export_and_read_it_back(live, page):
    import csv
    import io

    log_in(page, live, "peopleadmin")
    page.goto(f"{live.url}/admin/licenses/people")
    page.get_by_role("link", name="Export to CSV…").click()
    assert axe_findings(page) == []
    screenshot(page, "export")
    page.get_by_label("Email").check()
    page.get_by_label("UTF-8 with a byte-order mark (for Excel)").check()
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download CSV").click()
    download = download_info.value
    assert re.fullmatch(
        r"intranet\.example\.com-people-\d{4}-\d{2}-\d{2}\.csv", download.suggested_filename
    )
    data = download.path().read_bytes()
    assert data.startswith(b"\xef\xbb\xbfUsername,First name,Surname,ID,Account state,Email\r\n")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    assert rows[1][:6] == ["admin", "Intranet", "Administrator", "1", "Yes", "admin@example.com"]
    assert len(rows) == 1 + 64  # every profile, the administrator and blocked ones included
    assert sum(1 for row in rows[1:] if row[4] == "No") == 5


def test_a_refused_addition_keeps_the_form_and_says_why_beside_it(live, page):
    log_in(page, live, "peopleadmin")
    page.goto(f"{live.url}/admin/licenses/people")
    page.get_by_role("link", name="Add one person…").click()
    page.get_by_label("Username", exact=True).fill("jennifer")  # taken already
    page.get_by_label("First name").fill("Jenny")
    page.get_by_label("Surname").fill("Again")
    page.get_by_role("button", name="Add person").click()
    add_section = page.locator("section[aria-labelledby=add-heading]")
    expect(add_section.locator(".lic-message")).to_contain_text("already exists")
    expect(page.get_by_label("First name")).to_have_value("Jenny")
    assert axe_findings(page) == []


def test_the_request_form_shows_the_fields_of_the_chosen_kind(live, page):
    log_in(page, live, "sysadmin")
    page.goto(f"{live.url}/admin/licenses/request")
    expect(page.get_by_label("Pool", exact=True)).to_be_visible()
    expect(page.get_by_label("From pool")).to_be_hidden()
    page.get_by_label("Move seats from one pool to another").check()
    expect(page.get_by_label("From pool")).to_be_visible()
    expect(page.get_by_label("Pool", exact=True)).to_be_hidden()


def test_sync_now_shows_its_report(live, page, slapd_server):
    from slapd import ADMIN_DN, ADMIN_PASSWORD, Directory

    tree = Directory(slapd_server)
    for number in range(3):
        tree.add_ad_user(f"synced{number}")
    live.app.config.update(
        LICENSES_LDAP_URL=slapd_server.url,
        LICENSES_LDAP_BIND_DN=ADMIN_DN,
        LICENSES_LDAP_PASSWORD=ADMIN_PASSWORD,
        LICENSES_LDAP_BASE_DN=tree.base_dn,
    )
    try:
        log_in(page, live, "peopleadmin")
        page.goto(f"{live.url}/admin/licenses/people")
        page.get_by_role("button", name="Sync now").click()
        expect(
            page.get_by_role("row", name=re.compile(r"created active\s+3", re.I))
        ).to_be_visible()
        assert person_state(live.app, "synced0")[:3] == (True, "primary", "intranet")
        assert axe_findings(page) == []
        screenshot(page, "sync-report")
    finally:
        tree.conn.unbind()

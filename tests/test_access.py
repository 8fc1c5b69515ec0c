"""Who may open what: every route of the blueprint in one authorisation table."""

from __future__ import annotations

import pytest
from conftest import person_state

SYSADMIN = "sysadmin"
PEOPLE = "people_admin"

TOKEN = "0123456789abcdef0123456789abcdef"  # an upload token that names no upload

#: endpoint -> (method, path, role). {id} is replaced by jennifer's user id.
ROUTES = {
    "licenses.license_page": ("GET", "/admin/licenses/", SYSADMIN),
    "licenses.install_license": ("POST", "/admin/licenses/install", SYSADMIN),
    "licenses.fetch_license": ("POST", "/admin/licenses/fetch", SYSADMIN),
    "licenses.summary": ("GET", "/admin/licenses/summary", SYSADMIN),
    "licenses.set_responsible_person": ("POST", "/admin/licenses/responsible-person", SYSADMIN),
    "licenses.request_page": ("GET", "/admin/licenses/request", SYSADMIN),
    "licenses.cancel_request": ("POST", "/admin/licenses/request/1/cancel", SYSADMIN),
    "licenses.acknowledge_request": ("POST", "/admin/licenses/request/1/acknowledge", SYSADMIN),
    "licenses.people_page": ("GET", "/admin/licenses/people", PEOPLE),
    "licenses.add_person": ("POST", "/admin/licenses/people/add", PEOPLE),
    "licenses.block_person": ("POST", "/admin/licenses/people/{id}/block", PEOPLE),
    "licenses.unblock_person": ("POST", "/admin/licenses/people/{id}/unblock", PEOPLE),
    "licenses.move_person": ("POST", "/admin/licenses/people/{id}/move", PEOPLE),
    "licenses.delete_person": ("GET", "/admin/licenses/people/{id}/delete", PEOPLE),
    "licenses.activate_waiting": ("POST", "/admin/licenses/people/activate-waiting", PEOPLE),
    "licenses.sync_directory": ("POST", "/admin/licenses/people/sync-directory", PEOPLE),
    "licenses.export_people": ("GET", "/admin/licenses/people/export", PEOPLE),
    "licenses.import_page": ("GET", "/admin/licenses/people/import", PEOPLE),
    "licenses.import_upload": ("POST", "/admin/licenses/people/import", PEOPLE),
    "licenses.import_preview": ("GET", f"/admin/licenses/people/import/{TOKEN}", PEOPLE),
    "licenses.import_apply": ("POST", f"/admin/licenses/people/import/{TOKEN}/apply", PEOPLE),
    "licenses.import_discard": ("POST", f"/admin/licenses/people/import/{TOKEN}/discard", PEOPLE),
}

#: Who has which role among the demo accounts.
ROLES = {
    "admin": {SYSADMIN, PEOPLE},
    "sysadmin": {SYSADMIN},
    "peopleadmin": {PEOPLE},
    "jennifer": set(),
}


def test_every_route_is_in_the_table(app):
    endpoints = {
        rule.endpoint
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("licenses.") and rule.endpoint != "licenses.static"
    }
    assert endpoints == set(ROUTES), "add new routes to ROUTES in tests/test_access.py"


def _call(client, endpoint, jennifer_id):
    method, path, _role = ROUTES[endpoint]
    path = path.format(id=jennifer_id)
    return client.open(path, method=method, data={})


@pytest.mark.parametrize("endpoint", sorted(ROUTES))
def test_anonymous_users_are_sent_to_log_in(client, endpoint):
    response = _call(client, endpoint, 1)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


@pytest.mark.parametrize("endpoint", sorted(ROUTES))
@pytest.mark.parametrize("account", sorted(ROLES))
def test_each_role_gets_its_pages_and_a_403_elsewhere(
    app, client, auth, accounts, make_person, endpoint, account
):
    jennifer_id = make_person("jenny")
    assert auth.login(account).status_code == 302
    response = _call(client, endpoint, jennifer_id)
    role = ROUTES[endpoint][2]
    if role in ROLES[account]:
        assert response.status_code in (200, 302, 400, 409)  # served: a page, or the form back
        if response.status_code == 302:
            assert not response.headers["Location"].startswith("/login")
    else:
        assert response.status_code == 403
        assert "You do not have access to this page" in response.get_data(as_text=True)
        assert person_state(app, "jenny")[0] is True  # nothing changed

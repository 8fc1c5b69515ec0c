"""The People page and the `flask licenses people` commands (issue 4)."""

from __future__ import annotations

import html
import re
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa
from conftest import (
    PASSWORD,
    administrator_client,
    count_users,
    person_state,
    statements_run,
    usage,
)

import wsgi
from intranet_licenses import people
from intranet_licenses.extension import adapter
from intranet_licenses.models import AWAITING_LICENSE, BLOCKED_BY_ADMIN

PEOPLE = "/admin/licenses/people"


def text_of(response) -> str:
    page = re.sub(r"<[^>]+>", " ", response.get_data(as_text=True))
    return re.sub(r"\s+", " ", html.unescape(page))


def usernames_on(response) -> list[str]:
    html = response.get_data(as_text=True)
    body = html[html.index("<tbody>") : html.index("</tbody>")]
    return re.findall(r"<tr>\s*<td>\d+</td>\s*<td>([^<]+)</td>", body)


@pytest.fixture
def peopleadmin(auth, accounts):
    auth.login("peopleadmin")
    return auth


def user_id(app, username):
    with app.app_context():
        return wsgi.db.session.scalar(
            sa.select(wsgi.User.id).where(wsgi.User.username == username)
        )


def test_meters_show_used_limit_free_and_waiting(client, peopleadmin, make_person):
    make_person("waiter", area="partners", blocked=AWAITING_LICENSE)
    page = text_of(client.get(PEOPLE))
    assert "3 of 100 in use" in page and "97 free" in page
    assert "0 of 20 in use" in page and "1 waiting for a license" in page


def test_search_is_a_case_insensitive_prefix_on_username_names_and_email(
    client, peopleadmin, make_person
):
    make_person("zoe.quinn", first_name="Zoë", surname="Quinn", email="zq@partner.org")
    make_person("bob", first_name="Robert", surname="Zoeller", email="bob@example.com")
    make_person("carl", first_name="Carl", surname="Smith", email="zorro@example.com")
    assert usernames_on(client.get(PEOPLE, query_string={"q": "ZOE"})) == ["zoe.quinn", "bob"]
    assert usernames_on(client.get(PEOPLE, query_string={"q": "zo"})) == [
        "zoe.quinn",
        "bob",
        "carl",
    ]
    assert usernames_on(client.get(PEOPLE, query_string={"q": "zoë"})) == ["zoe.quinn"]
    assert usernames_on(client.get(PEOPLE, query_string={"q": "%"})) == []
    assert usernames_on(client.get(PEOPLE, query_string={"q": "uinn"})) == []


def test_filters_by_state_area_pool_and_reason(client, peopleadmin, make_person):
    make_person("p1", area="partners")
    make_person("r1", readonly=True)
    make_person("b1", blocked=BLOCKED_BY_ADMIN)
    make_person("w1", blocked=AWAITING_LICENSE)
    assert usernames_on(client.get(PEOPLE, query_string={"state": "blocked"})) == ["b1", "w1"]
    assert usernames_on(client.get(PEOPLE, query_string={"area": "partners"})) == ["p1"]
    assert usernames_on(client.get(PEOPLE, query_string={"pool": "readonly"})) == ["r1"]
    assert usernames_on(client.get(PEOPLE, query_string={"reason": "license"})) == ["w1"]
    assert "Nobody matches." in text_of(
        client.get(PEOPLE, query_string={"state": "blocked", "area": "suppliers"})
    )


def test_keyset_pages_forward_and_back(app, client, peopleadmin, make_person):
    app.config["LICENSES_PAGE_SIZE"] = 3
    for number in range(5):
        make_person(f"page{number}")
    first = client.get(PEOPLE)
    assert usernames_on(first) == ["admin", "sysadmin", "peopleadmin"]
    next_link = re.search(r'href="([^"]+)" rel="next"', first.get_data(as_text=True)).group(1)
    second = client.get(next_link.replace("&amp;", "&"))
    assert usernames_on(second) == ["jennifer", "page0", "page1"]
    prev_link = re.search(r'href="([^"]+)" rel="prev"', second.get_data(as_text=True)).group(1)
    assert usernames_on(client.get(prev_link.replace("&amp;", "&"))) == [
        "admin",
        "sysadmin",
        "peopleadmin",
    ]
    assert usernames_on(client.get(PEOPLE, query_string={"after": "abc"}))[0] == "admin"


def test_add_one_person(app, client, peopleadmin):
    response = client.post(
        f"{PEOPLE}/add",
        data={
            "username": "new.person",
            "first_name": "Nóra",
            "surname": "O'Neill",
            "email": "nora@example.com",
            "area": "suppliers",
        },
        follow_redirects=True,
    )
    assert "Done: new.person was added and is active." in text_of(response)
    assert person_state(app, "new.person") == (True, "suppliers", "extranet", None, "extranet")


def test_adding_to_a_full_pool_shows_the_refusal_and_changes_nothing(
    app, client, peopleadmin, install_license
):
    install_license(intranet=3)
    before = count_users(app)
    response = client.post(
        f"{PEOPLE}/add",
        data={"username": "late", "first_name": "L", "surname": "Ate", "area": "primary"},
        follow_redirects=True,
    )
    page = text_of(response)
    assert "Not done: No free seat in the intranet pool: 3 of 3 seats are in use" in page
    assert "Request more licenses, or block or delete people" in page
    assert count_users(app) == before and usage(app)["intranet"] == 3


def test_add_refuses_bad_fields_in_words(app, client, peopleadmin):
    before = count_users(app)
    page = text_of(
        client.post(
            f"{PEOPLE}/add",
            data={"username": "Jennifer", "first_name": "J", "surname": "X", "area": "primary"},
            follow_redirects=True,
        )
    )
    assert "A person with the username 'jennifer' already exists" in page
    page = text_of(
        client.post(
            f"{PEOPLE}/add",
            data={"username": "x", "first_name": "", "surname": "X", "area": "primary"},
            follow_redirects=True,
        )
    )
    assert "The person was not added. First name: This field is required." in page
    page = text_of(
        client.post(
            f"{PEOPLE}/add",
            data={"username": "y", "first_name": "Y", "surname": "Y", "area": "mars"},
            follow_redirects=True,
        )
    )
    assert "The person was not added. Area: Not a valid choice." in page
    page = text_of(
        client.post(
            f"{PEOPLE}/add",
            data={"username": "\ufeffzoe", "first_name": "Z", "surname": "Y", "area": "primary"},
            follow_redirects=True,
        )
    )
    assert "contains U+FEFF ZERO WIDTH NO-BREAK SPACE, an invisible character" in page
    assert count_users(app) == before


def test_block_then_unblock_refused_when_full(app, client, peopleadmin, install_license):
    jennifer = user_id(app, "jennifer")
    page = text_of(client.post(f"{PEOPLE}/{jennifer}/block", follow_redirects=True))
    assert "Done: jennifer is blocked; their seat is free." in page
    assert person_state(app, "jennifer")[:4] == (False, "primary", "intranet", BLOCKED_BY_ADMIN)
    install_license(intranet=2)
    page = text_of(client.post(f"{PEOPLE}/{jennifer}/unblock", follow_redirects=True))
    assert "Not done: No free seat in the intranet pool: 2 of 2 seats are in use" in page
    assert person_state(app, "jennifer")[0] is False
    install_license(intranet=3)
    page = text_of(client.post(f"{PEOPLE}/{jennifer}/unblock", follow_redirects=True))
    assert "Done: jennifer is active again." in page
    assert person_state(app, "jennifer") == (True, "primary", "intranet", None, "intranet")


def test_the_administrator_account_cannot_be_blocked_from_the_page(app, client, peopleadmin):
    page = text_of(client.post(f"{PEOPLE}/{user_id(app, 'admin')}/block", follow_redirects=True))
    assert "Not done: The administrator account cannot be blocked." in page
    assert person_state(app, "admin")[0] is True
    html = client.get(PEOPLE).get_data(as_text=True)
    assert "Administrator account" in html
    assert f"/people/{user_id(app, 'admin')}/block" not in html


def test_delete_asks_for_confirmation_and_says_it_is_permanent(app, client, peopleadmin):
    jennifer = user_id(app, "jennifer")
    confirm = text_of(client.get(f"{PEOPLE}/{jennifer}/delete"))
    assert "Delete jennifer?" in confirm and "It cannot be undone." in confirm
    assert person_state(app, "jennifer") is not None  # the GET changed nothing
    page = text_of(client.post(f"{PEOPLE}/{jennifer}/delete", follow_redirects=True))
    assert "Done: jennifer was deleted for good." in page
    assert person_state(app, "jennifer") is None and usage(app)["intranet"] == 2
    gone = text_of(client.get(f"{PEOPLE}/{jennifer}/delete", follow_redirects=True))
    assert f"There is no person with ID {jennifer}" in gone


def test_move_into_a_full_pool_is_refused_and_the_person_stays(
    app, client, peopleadmin, install_license
):
    install_license(extranet=0)
    jennifer = user_id(app, "jennifer")
    page = text_of(
        client.post(f"{PEOPLE}/{jennifer}/move", data={"area": "partners"}, follow_redirects=True)
    )
    assert "Not done: No free seat in the extranet pool: 0 of 0" in page
    assert person_state(app, "jennifer")[:3] == (True, "primary", "intranet")
    page = text_of(
        client.post(
            f"{PEOPLE}/{jennifer}/move", data={"area": "primary", "readonly": "y"},
            follow_redirects=True,
        )
    )  # fmt: skip
    assert "Done: jennifer was moved." in page
    assert person_state(app, "jennifer")[:3] == (True, "primary", "readonly")


def test_each_row_links_to_the_persons_move_page_which_moves_and_comes_back(
    app, client, peopleadmin, install_license
):
    """One small form per row (Block or Unblock) and links to Move and Delete pages: a page of
    people stays cheap to render; the Move page has the area and read-only choice."""
    install_license()
    jennifer = user_id(app, "jennifer")
    listing = client.get(PEOPLE, query_string={"q": "jennifer"}).get_data(as_text=True)
    row = listing[listing.index("<tbody>") : listing.index("</tbody>")]
    assert row.count("<form") == 1 and 'aria-label="Block jennifer"' in row
    move_link = re.search(r'href="([^"]+)" aria-label="Move jennifer">Move…</a>', row).group(1)
    assert 'aria-label="Delete jennifer">Delete…</a>' in row
    move_page = client.get(html.unescape(move_link))
    page = move_page.get_data(as_text=True)
    assert move_page.status_code == 200 and "<h1>Move jennifer</h1>" in page
    assert '<label for="area">Area</label>' in page
    assert '<option selected value="primary">primary</option>' in page
    assert '<label for="readonly">Read-only</label>' in page
    back = re.search(r'name="next" value="([^"]+)"', page).group(1)
    assert html.unescape(back) == f"{PEOPLE}?q=jennifer"
    done = client.post(
        f"{PEOPLE}/{jennifer}/move", data={"area": "suppliers", "next": html.unescape(back)}
    )
    assert done.status_code == 302 and done.headers["Location"].endswith(f"{PEOPLE}?q=jennifer")
    assert person_state(app, "jennifer")[:3] == (True, "suppliers", "extranet")
    gone = text_of(client.get(f"{PEOPLE}/999999/move", follow_redirects=True))
    assert "There is no person with ID 999999" in gone


def test_activate_waiting_from_the_page(app, client, peopleadmin, make_person, install_license):
    make_person("wait1", blocked=AWAITING_LICENSE)
    make_person("wait2", blocked=AWAITING_LICENSE)
    install_license(intranet=4)
    page = text_of(client.post(f"{PEOPLE}/activate-waiting", follow_redirects=True))
    assert "Activated 1: wait1. Still waiting: 1." in page
    page = text_of(client.post(f"{PEOPLE}/activate-waiting", follow_redirects=True))
    assert "Nobody could be activated: 1 people wait" in page
    assert person_state(app, "wait2")[3] == AWAITING_LICENSE


def test_a_forged_post_without_csrf_token_changes_nothing(app, client, peopleadmin):
    app.config["WTF_CSRF_ENABLED"] = True
    jennifer = user_id(app, "jennifer")
    page = text_of(client.post(f"{PEOPLE}/{jennifer}/block", follow_redirects=True))
    assert "The form expired; please try again." in page
    assert person_state(app, "jennifer")[0] is True
    page = text_of(
        client.post(f"{PEOPLE}/{jennifer}/move", data={"area": "partners"}, follow_redirects=True)
    )
    assert "The form expired; please try again." in page
    assert person_state(app, "jennifer")[1] == "primary"


# The CLI -----------------------------------------------------------------------------


def test_cli_add_and_the_refusal_at_the_limit(app, runner, install_license):
    install_license(extranet=1)
    ok = runner.invoke(
        args=["licenses", "people", "add", "ext", "--first-name", "E", "--surname", "X",
              "--email", "ext@example.com", "--area", "partners"]
    )  # fmt: skip
    assert ok.exit_code == 0 and "ext was added and is active." in ok.output
    refused = runner.invoke(
        args=["licenses", "people", "add", "ext2", "--first-name", "E", "--surname", "X",
              "--email", "ext2@example.com", "--area", "suppliers"]
    )  # fmt: skip
    assert refused.exit_code == 1
    assert "No free seat in the extranet pool: 1 of 1 seats are in use" in refused.output
    assert person_state(app, "ext2") is None


def test_cli_block_unblock_move_delete_and_activate(app, runner, make_person, install_license):
    make_person("cli.user")
    result = runner.invoke(args=["licenses", "people", "block", "CLI.USER"])
    assert result.exit_code == 0 and "cli.user" in result.output.lower()
    assert person_state(app, "cli.user")[3] == BLOCKED_BY_ADMIN
    install_license(intranet=0)
    refused = runner.invoke(args=["licenses", "people", "unblock", "cli.user"])
    assert refused.exit_code == 1 and "intranet pool: 0 of 0" in refused.output
    install_license()
    assert runner.invoke(args=["licenses", "people", "unblock", "cli.user"]).exit_code == 0
    moved = runner.invoke(args=["licenses", "people", "move", "cli.user", "--area", "suppliers"])
    assert moved.exit_code == 0
    assert person_state(app, "cli.user")[:3] == (True, "suppliers", "extranet")
    readonly = runner.invoke(
        args=["licenses", "people", "move", "cli.user", "--area", "suppliers", "--readonly"]
    )
    assert readonly.exit_code == 0 and person_state(app, "cli.user")[2] == "readonly"
    unknown = runner.invoke(args=["licenses", "people", "move", "cli.user", "--area", "moon"])
    assert unknown.exit_code == 1 and "Unknown area 'moon'" in unknown.output
    admin = runner.invoke(args=["licenses", "people", "delete", "admin", "--yes"])
    assert admin.exit_code == 1 and "administrator account cannot be deleted" in admin.output
    nobody = runner.invoke(args=["licenses", "people", "block", "nobody"])
    assert nobody.exit_code == 1 and "Nobody has the username 'nobody'." in nobody.output
    gone = runner.invoke(args=["licenses", "people", "delete", "cli.user", "--yes"])
    assert gone.exit_code == 0 and person_state(app, "cli.user") is None
    make_person("patient", blocked=AWAITING_LICENSE)
    activated = runner.invoke(args=["licenses", "people", "activate-waiting"])
    assert activated.output.strip() == "Activated 1; 0 still waiting for a license."


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("https://evil.example/phish", "/admin/licenses/people"),
        ("//evil.example/x", "/admin/licenses/people"),
        ("/\\evil.example/x", "/admin/licenses/people"),
        ("/somewhere/else", "/admin/licenses/people"),
        ("/admin/licenses/people?q=jen", "/admin/licenses/people?q=jen"),
        (
            "/admin/licenses/people?q=a\r\nb",
            "/admin/licenses/people",
        ),  # not a 500 after the commit
        ("/admin/licenses/people?q=a\x00b", "/admin/licenses/people"),
        ("/admin/licenses/people/../../../logout", "/admin/licenses/people"),
        ("/admin/licenses/people/%2e%2e/%2E%2E/%2e%2e/logout", "/admin/licenses/people"),
        ("/admin/licenses/people/./x", "/admin/licenses/people"),
    ],
)
def test_the_way_back_only_goes_to_the_people_page(app, client, peopleadmin, target, expected):
    response = client.post(f"{PEOPLE}/{user_id(app, 'jennifer')}/block", data={"next": target})
    assert response.status_code == 302
    assert response.headers["Location"] == expected


@pytest.mark.parametrize(
    "query",
    [
        {"after": "-1", "before": "99999999999999999999"},
        {"after": "9223372036854775808"},
        {"q": "a\x00b"},
        {"before": "2147483648"},
    ],
)
def test_junk_in_the_query_string_is_never_a_500(client, peopleadmin, query):
    assert client.get(PEOPLE, query_string=query).status_code == 200


@pytest.mark.parametrize(
    "query",
    [{"endpoint": "x"}, {"_method": "POST"}, {"_external": "1"}, {"_anchor": "x"},
     {"_scheme": "https", "_external": "1"}, {"values": "1"}],
)  # fmt: skip
def test_url_for_argument_names_in_the_query_string_are_not_a_500_nor_change_the_pager(
    app, client, peopleadmin, query
):
    """The pager's links are built from the request's query string: a parameter named as
    one of url_for's own arguments was passed to it (a TypeError, a BuildError, an
    absolute link, an anchor)."""
    app.config["LICENSES_PAGE_SIZE"] = 1
    first = client.get(PEOPLE, query_string={**query, "state": "active"})
    assert first.status_code == 200
    html = first.get_data(as_text=True)
    next_link = re.search(r'href="([^"]+)" rel="next"', html).group(1)
    assert next_link == f"{PEOPLE}?state=active&amp;after={user_id(app, 'admin')}"
    second = client.get(next_link.replace("&amp;", "&") + "&" + urlencode(query))
    assert second.status_code == 200
    prev_link = re.search(r'href="([^"]+)" rel="prev"', second.get_data(as_text=True)).group(1)
    assert prev_link.startswith(f"{PEOPLE}?") and "#" not in prev_link


def test_an_id_out_of_range_is_not_found(client, peopleadmin):
    page = text_of(client.post(f"{PEOPLE}/2147483648/block", follow_redirects=True))
    assert "There is no person with ID 2147483648" in page
    page = text_of(client.get(f"{PEOPLE}/2147483648/delete", follow_redirects=True))
    assert "There is no person with ID 2147483648" in page


def test_adding_one_person_is_a_page_of_its_own_linked_from_the_people_page(
    app, client, peopleadmin
):
    """The People page links to "Add one person…" (it no longer carries the form); the Add
    page goes back to the list it came from, after adding or on Cancel."""
    listing = client.get(PEOPLE, query_string={"q": "jen"}).get_data(as_text=True)
    assert 'id="add-heading"' not in listing and 'name="first_name"' not in listing
    link = re.search(r'<a href="([^"]+)">Add one person…</a>', listing).group(1)
    add_page = client.get(html.unescape(link))
    page = add_page.get_data(as_text=True)
    assert add_page.status_code == 200 and '<h1 id="add-heading">Add one person</h1>' in page
    assert '<label for="username">Username</label>' in page and "97 free" in text_of(add_page)
    back = re.search(r'name="next" value="([^"]+)"', page).group(1)
    assert html.unescape(back) == f"{PEOPLE}?q=jen"
    assert re.search(rf'<a href="{re.escape(back)}">Cancel</a>', page)
    data = {"username": "new.one", "first_name": "N", "surname": "O", "area": "primary"}
    done = client.post(f"{PEOPLE}/add", data={**data, "next": html.unescape(back)})
    assert done.status_code == 302 and done.headers["Location"] == f"{PEOPLE}?q=jen"
    assert person_state(app, "new.one")[0] is True
    elsewhere = client.get(f"{PEOPLE}/add", query_string={"next": "https://evil.example/"})
    assert 'name="next" value="/admin/licenses/people"' in elsewhere.get_data(as_text=True)


def test_a_refused_addition_comes_back_with_what_was_typed_and_why(app, client, peopleadmin):
    response = client.post(
        f"{PEOPLE}/add",
        data={
            "username": "keep.me",
            "first_name": "Kée",
            "surname": "Pme",
            "email": "not an address",
            "area": "partners",
        },
    )
    assert response.status_code == 409
    html = response.get_data(as_text=True)
    form = html[html.index('<section aria-labelledby="add-heading">') :]
    form = form[: form.index("</section>")]
    assert "is not a valid email address" in form  # the reason sits with the form
    assert 'value="keep.me"' in form and 'value="Kée"' in form
    assert '<option selected value="partners">' in form
    assert "<title>Add one person · " in html and 'class="lic-filters"' not in html
    assert person_state(app, "keep.me") is None


@pytest.mark.parametrize("narrow_below", [1, 10_000], ids=["walk-in-id-order", "key-indexes"])
def test_a_search_finds_and_pages_the_same_people_either_way(
    app, client, peopleadmin, make_person, monkeypatch, narrow_below
):
    """people.page answers a broad search by walking in id order and a narrow one from the
    key indexes (NARROW_SEARCH); both give the same people in the same pages."""
    from intranet_licenses import people

    monkeypatch.setattr(people, "NARROW_SEARCH", narrow_below)
    app.config["LICENSES_PAGE_SIZE"] = 2
    make_person("anna1", first_name="Anna", surname="Berg")
    make_person("zed", first_name="Zed", surname="Anders")
    make_person("other", first_name="Olga", surname="Smith", email="an@example.com")
    make_person("none", first_name="Nils", surname="Berg")
    make_person("anton", first_name="Anton", surname="Holm")
    first = client.get(PEOPLE, query_string={"q": "AN"})
    assert usernames_on(first) == ["anna1", "zed"]
    next_link = re.search(r'href="([^"]+)" rel="next"', first.get_data(as_text=True)).group(1)
    second = client.get(next_link.replace("&amp;", "&"))
    assert usernames_on(second) == ["other", "anton"]
    prev_link = re.search(r'href="([^"]+)" rel="prev"', second.get_data(as_text=True)).group(1)
    assert usernames_on(client.get(prev_link.replace("&amp;", "&"))) == ["anna1", "zed"]
    assert usernames_on(client.get(PEOPLE, query_string={"q": "an_"})) == []
    assert usernames_on(client.get(PEOPLE, query_string={"q": "an", "state": "blocked"})) == []


@pytest.mark.postgres
def test_cli_add_with_a_name_over_255_characters_is_one_sentence_on_postgresql(
    postgres_app,
):
    runner = postgres_app.test_cli_runner()
    result = runner.invoke(
        args=["licenses", "people", "add", "longname", "--first-name", "x" * 300,
              "--surname", "Y", "--email", "longname@example.com"]
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "first name of 'longname' is longer than 255 characters" in result.output
    assert person_state(postgres_app, "longname") is None


def test_cli_add_refuses_an_invisible_character_in_the_username(app, runner):
    result = runner.invoke(
        args=["licenses", "people", "add", "zoe\u200b", "--first-name", "Zoe",
              "--surname", "Y", "--email", "zoe@example.com"]
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "U+200B ZERO WIDTH SPACE" in result.output
    assert person_state(app, "zoe\u200b") is None


def test_the_move_page_of_the_administrator_account_says_it_takes_no_seat(client, peopleadmin):
    text = client.get(f"{PEOPLE}/1/move").get_data(as_text=True)
    assert "never takes a seat, in any pool" in text
    assert "takes a seat from the" not in text


@pytest.mark.parametrize("config", [{}, {"WTF_CSRF_FIELD_NAME": "my_csrf"},
                                    {"WTF_CSRF_SECRET_KEY": "another-secret"}])  # fmt: skip
def test_a_row_form_posts_with_the_csrf_field_the_page_wrote(app, client, auth, accounts,
                                                             config):  # fmt: skip
    """With CSRF on (as in production), a Block form from the page is accepted: the field
    the page writes has the name and token FlaskForm checks, also when the host renames it."""
    auth.login("peopleadmin")
    app.config.update(WTF_CSRF_ENABLED=True, **config)
    page = client.get("/admin/licenses/people").get_data(as_text=True)
    jennifer = user_id(app, "jennifer")
    form = re.search(
        rf'<form method="post" action="/admin/licenses/people/{jennifer}/block">.*?</form>',
        page,
        re.S,
    ).group(0)
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form))
    assert config.get("WTF_CSRF_FIELD_NAME", "csrf_token") in fields
    client.post(f"/admin/licenses/people/{jennifer}/block", data=fields)
    assert person_state(app, "jennifer")[0] is False


def test_a_walking_search_leaves_the_hosts_planner_settings_alone(postgres_app, monkeypatch):
    """The walk runs without parallel workers on PostgreSQL; the host's later statements in
    the same request keep the server's setting."""
    monkeypatch.setattr(people, "NARROW_SEARCH", 1)  # every search walks
    seen = []

    @postgres_app.after_request
    def host_statement(response):
        statement = sa.text("show max_parallel_workers_per_gather")
        seen.append(wsgi.db.session.execute(statement).scalar())
        return response

    with postgres_app.app_context():
        default = wsgi.db.session.execute(sa.text("show max_parallel_workers_per_gather")).scalar()
    client = postgres_app.test_client()
    client.post("/login", data={"username": "admin", "password": PASSWORD})
    response = client.get("/admin/licenses/people?q=adm")
    assert response.status_code == 200 and "Administrator" in response.get_data(as_text=True)
    assert seen[-1] == default


def test_no_page_read_is_planned_in_parallel_on_postgresql(postgres_app):
    """Each page read selects current_schema() (people._serial_plan), a PARALLEL UNSAFE
    function, so PostgreSQL plans it serially without a setting changed around it (starting
    workers took 10 ms of a 0.1 ms walk). Forced parallel plans (force_parallel_mode /
    debug_parallel_query) show it: the same statements without the column get a Gather."""
    from intranet_licenses.extension import adapter

    with postgres_app.app_context():
        connection = wsgi.db.session.connection()
        version = connection.exec_driver_sql("show server_version_num").scalar()
        force = "debug_parallel_query" if int(version) >= 160000 else "force_parallel_mode"
        connection.exec_driver_sql(f"set local {force} = on")
        ad = adapter()
        params = {**people._search_params("adm"), "size": 26, "cursor": 1, "window": 10}

        def plan(statement) -> str:
            compiled = statement.compile(dialect=connection.dialect)
            rows = connection.exec_driver_sql(
                "explain " + compiled.string, compiled.construct_params(params)
            )
            return "\n".join(row[0] for row in rows)

        for mode in ("walk", "window", "narrow", None):
            shape = (mode, None, False, False, False)
            for direction in (None, "after", "before"):
                statement = people._page_statement(ad, shape, direction)
                assert "Gather" not in plan(statement), (mode, direction)
            bare = people._filtered(ad, "walk" if mode == "window" else mode, *shape[1:])
            bare = bare.order_by(ad.column("id")).limit(26)
            assert "Gather" in plan(bare), mode  # what the column prevents
        rows = connection.execute(people._page_statement(ad, ("walk",) + (None,) * 4, None),
                                  params).all()  # fmt: skip
        assert [row.username for row in rows] == ["admin"]


_TOP = "\U0010ffff"


def test_on_sqlite_the_key_range_alone_is_exactly_the_prefix_search():
    """SQLite compares the keys as code points, so people._prefix leaves the LIKE out there
    (a LIKE on a bound pattern made SQLite prepare the statement again on every search):
    the range alone selects exactly the keys that start with the text (but for a next
    character U+10FFFF, a noncharacter, which the range with the LIKE left out too)."""
    keys = ["", "a", "an", "an_x", "an%x", "an\\x", "anx", "anna", "anémone", "an\uffff",
            "an\U0010fffe", "ao", "am" + _TOP, "b", _TOP, "an" + _TOP,
            "日本", "日本語"]  # fmt: skip
    engine = sa.create_engine("sqlite://")
    table = sa.table("k", sa.column("key", sa.String))
    with engine.begin() as connection:
        connection.exec_driver_sql("create table k (key varchar(255))")
        connection.execute(sa.insert(table), [{"key": key} for key in keys])
        for text in ["a", "an", "an_", "an%", "an\\", "ané", "日本", "", "\uffff", "z"]:
            statement = sa.select(table.c.key).where(people._prefix(table.c.key, text))
            assert "LIKE" not in str(statement.compile(engine))
            found = sorted(connection.execute(statement).scalars())
            expected = [
                k for k in keys if k.startswith(text) and k[len(text) : len(text) + 1] != _TOP
            ]
            assert found == sorted(expected), text


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
@pytest.mark.parametrize("narrow_below", [1, 10_000], ids=["walk-in-id-order", "key-indexes"])
def test_a_search_counts_its_matches_in_the_figures_statement(
    request, database, narrow_below, monkeypatch
):
    """The People page reads a search's count of matches with the seat figures
    (people.counted_with): a search is two statements of the page's own (the figures with
    the count, the page of people) besides the host's user load (a walk that does not fill
    its page asks one more: whether any id lies beyond its window), and finds the people
    that counting first (people.page without ``counted``) finds."""
    from intranet_licenses import seats
    from intranet_licenses.models import utcnow

    app = request.getfixturevalue("app" if database == "sqlite" else "postgres_app")
    monkeypatch.setattr(people, "NARROW_SEARCH", narrow_below)
    app.config["LICENSES_PAGE_SIZE"] = 2
    with app.app_context():
        people_ = [("anna1", "Anna", "Berg"), ("zed", "Zed", "Anders"),
                   ("olga", "Olga", "Smith"), ("anton", "Anton", "Holm")]  # fmt: skip
        for username, first, surname in people_:
            seats.add_person(wsgi.db.session, username=username, first_name=first,
                             surname=surname, email=f"{username}@example.com", area="primary",
                             readonly=False, actor="test", now=utcnow(), path="test")  # fmt: skip
        wsgi.db.session.commit()
    statements = statements_run(app)
    client = administrator_client(app)
    anna = user_id(app, "anna1")
    # (search, after, people found, statements when every search with a match walks)
    for search, after, expected, walking in [("an", None, ["anna1", "zed"], 2),
                                             ("an", anna, ["zed", "anton"], 3),
                                             ("ZZ", None, [], 2),  # no match: no walk
                                             ("adm", None, ["admin"], 3)]:  # fmt: skip
        statements.clear()
        response = client.get(PEOPLE, query_string={"q": search, "after": after or ""})
        assert usernames_on(response) == expected, (search, after)
        ours = [s for s in statements if "password_hash" not in s]  # not the host's user load
        assert len(ours) == (walking if narrow_below == 1 else 2), ours
        assert "narrow_count" in ours[0] and "licenses_profile.area" in ours[1], ours
        with app.test_request_context():
            by_counting = people.page(wsgi.db.session, after=after, size=2, search=search)
            count, values = people.counted_with(search)
            row = wsgi.db.session.connection().execute(sa.select(*count), values).one()
            counted = people.page(wsgi.db.session, after=after, size=2, search=search,
                                  counted=row._mapping)  # fmt: skip
        assert [p.username for p in by_counting.rows] == expected
        assert counted == by_counting


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
@pytest.mark.parametrize(
    ("window", "wide"),
    [(10**6, 10**6), (1, 10**6), (1, 1), (3, 10**6)],
    ids=["window-holds-all", "then-key-indexes", "then-walk-on", "small-window"],
)
def test_a_walk_reads_its_window_first_and_finds_the_same_pages(
    request, database, window, wide, monkeypatch
):
    """A walking search reads WALK_WINDOW ids first; when they do not fill the page and ids
    lie beyond, it reads the page from the key indexes (fewer than WIDE_SEARCH entries) or
    walks on. Every way gives the pages the key indexes give, forward and back."""
    from intranet_licenses import seats
    from intranet_licenses.models import utcnow

    app = request.getfixturevalue("app" if database == "sqlite" else "postgres_app")
    with app.app_context():
        for number in range(12):  # "an..." people with gaps of other people between them
            first = "Anna" if number % 4 == 0 or number > 8 else "Olga"
            seats.add_person(wsgi.db.session, username=f"p{number:02d}", first_name=first,
                             surname="Berg", email=f"p{number}@example.com", area="primary",
                             readonly=False, actor="test", now=utcnow(), path="test")  # fmt: skip
        wsgi.db.session.commit()

    def every_page(**config):
        for name, value in config.items():
            monkeypatch.setattr(people, name, value)
        with app.test_request_context():
            session, pages, after = wsgi.db.session, [], None
            while True:
                listing = people.page(session, after=after, size=2, search="an")
                pages.append(listing)
                if listing.next_after is None:
                    break
                after = listing.next_after
            before = pages[-1].rows[0].id if pages[-1].rows else None
            while before is not None:
                listing = people.page(session, before=before, size=2, search="an")
                pages.append(listing)
                before = listing.prev_before
            return pages

    expected = every_page(NARROW_SEARCH=10**6)  # the key indexes only
    assert [p.username for p in expected[0].rows] == ["p00", "p04"]
    walked = every_page(NARROW_SEARCH=1, WALK_WINDOW=window, WIDE_SEARCH=wide)
    assert walked == expected


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_page_without_a_search_is_read_with_the_figures(request, database):
    """Without a search, on PostgreSQL, the page of people is a column of the figures
    statement (people.read_with, JSON): one statement of the page's own besides the host's
    user load, and the same people, cursors and order as reading the page on its own, for
    every filter and both directions. On SQLite the page is a statement of its own."""
    from intranet_licenses import seats
    from intranet_licenses.models import utcnow

    app = request.getfixturevalue("app" if database == "sqlite" else "postgres_app")
    app.config["LICENSES_PAGE_SIZE"] = 2
    with app.app_context():
        for number in range(7):
            user = seats.add_person(
                wsgi.db.session, username=f"p{number}", first_name="Ann", surname="O'Brien <b>",
                email=f"p{number}@example.com", area="partners" if number % 2 else "primary",
                readonly=False, actor="test", now=utcnow(), path="test",
            )  # fmt: skip
            if number % 3 == 0:
                seats.block(wsgi.db.session, user, actor="test", now=utcnow(), path="test")
        wsgi.db.session.commit()
    statements = statements_run(app)
    client = administrator_client(app)
    middle = user_id(app, "p3")
    for query, expected in [
        ({}, ["admin", "p0"]), ({"after": middle}, ["p4", "p5"]),
        ({"before": middle}, ["p1", "p2"]), ({"state": "blocked"}, ["p0", "p3"]),
        ({"area": "partners"}, ["p1", "p3"]),
        ({"state": "active", "area": "partners", "after": middle}, ["p5"]),
        ({"reason": "admin"}, ["p0", "p3"]),
        ({"pool": "intranet", "before": middle}, ["p0", "p2"]),
    ]:  # fmt: skip
        statements.clear()
        response = client.get(PEOPLE, query_string=query)
        assert response.status_code == 200, query
        ours = [s for s in statements if "password_hash" not in s]  # not the host's user load
        if database == "sqlite":
            assert len(ours) == 2 and "people_rows" not in " ".join(ours), (query, ours)
        else:
            assert len(ours) == 1 and "people_rows" in ours[0], (query, ours)
        with app.test_request_context():
            session = wsgi.db.session
            alone = people.page(session, size=2, **query)
            also, values = people.read_with(session, size=2, **query)
            assert bool(also) == (database == "postgresql"), query
            if not also:  # the JSON column itself, which SQLite can read as well
                also, values = _json_page_read_with(session, size=2, **query)
            row = session.connection().execute(sa.select(*also), values).one()
            read = people.page(session, size=2, counted=row._mapping, **query)
            assert read == alone, query
        assert usernames_on(response) == [p.username for p in alone.rows] == expected, query
        assert len(alone.rows) == 2 or not alone.next_after, query


def _json_page_read_with(session, *, size, after=None, before=None, **filters):
    """``people.read_with`` as on PostgreSQL: the page of people as a JSON column."""
    shape, params = people._shape(None, filters, size)
    params["cursor"] = before if before is not None else after
    direction = people._direction(after, before)
    return (people._rows_column(adapter(), shape, direction),), params

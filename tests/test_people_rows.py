"""The People table's rows written in Python (people_rows): the bytes of the Jinja loop."""

from __future__ import annotations

import itertools

import jinja2
import pytest
from markupsafe import Markup, escape

from intranet_licenses.people import PersonRow
from intranet_licenses.people_rows import _escaped, people_rows
from intranet_licenses.views import REASON_LABELS

#: The loop people.html had before people_rows, word for word: the reference it must match.
REFERENCE = jinja2.Environment(autoescape=True).from_string(
    """{% for p in rows %}
    <tr>
      <td>{{ p.id }}</td>
      <td>{{ p.username }}</td>
      <td>{{ p.first_name }} {{ p.surname }}</td>
      <td>{{ p.email }}</td>
      <td>
        {% if p.exempt %}<span class="lic-badge">Administrator account</span>
        {% elif p.active %}<span class="lic-state lic-state-active">Active</span>
        {% else %}<span class="lic-state lic-state-blocked">Blocked</span><br><small>{{ reason_labels.get(p.block_reason, '') }}</small>{% endif %}
      </td>
      <td>{{ p.area }}</td>
      <td>{{ p.pool }}</td>
      <td class="lic-actions">
        {%- if not p.exempt %}
        {%- if p.active %}
        <form method="post" action="{{ row_url }}/{{ p.id }}/block">{{ row_fields }}<button type="submit" aria-label="Block {{ p.username }}">Block</button></form>
        {%- else %}
        <form method="post" action="{{ row_url }}/{{ p.id }}/unblock">{{ row_fields }}<button type="submit" aria-label="Unblock {{ p.username }}">Unblock</button></form>
        {%- endif %}
        <a href="{{ row_url }}/{{ p.id }}/move{{ row_next }}" aria-label="Move {{ p.username }}">Move…</a>
        <a href="{{ row_url }}/{{ p.id }}/delete" aria-label="Delete {{ p.username }}">Delete…</a>
        {%- endif %}
      </td>
    </tr>
  {% else %}
    <tr><td colspan="8">Nobody matches.</td></tr>
  {% endfor %}"""  # noqa: E501
)

AWKWARD = ['<script>alert("x")</script>', "O'Brien & Sons", '"quoted"', "Zoë > Ana", "", "a\nb"]


def every_kind_of_row() -> list[PersonRow]:
    """Exempt, active and blocked rows (each reason, an unknown one, none), awkward text."""
    states = [(True, True, None), (True, False, None)] + [
        (False, False, reason) for reason in (*REASON_LABELS, "unknown", None)
    ]
    rows = []
    for number, ((active, exempt, reason), text) in enumerate(
        itertools.product(states, AWKWARD), start=1
    ):
        rows.append(
            PersonRow(
                id=number,
                username=f"{text}{number}",
                first_name=text,
                surname=f"{text}-s",
                email=f"{text}@example.com",
                active=active,
                area=f"area {text}",
                pool=f"pool {text}",
                block_reason=reason,
                exempt=exempt,
            )
        )
    return rows


SHARED = {
    "row_url": "/intranet&co/admin/licenses/people",
    "row_fields": Markup('<input type="hidden" name="csrf_token" value="t&amp;k">'),
    "row_next": Markup("?next=%2Fadmin%2Flicenses%2Fpeople%3Fq%3D%3Cb%3E"),
    "reason_labels": REASON_LABELS,
}


def with_a_nul(rows: list[PersonRow]) -> list[PersonRow]:
    """``rows`` with a NUL in one surname: people_rows then escapes each value alone."""
    return [*rows[:-1], rows[-1]._replace(surname="Nul\0<b>")]


@pytest.mark.parametrize(
    "rows",
    [every_kind_of_row(), with_a_nul(every_kind_of_row()), []],
    ids=["every-kind", "a-nul-in-a-name", "nobody"],
)
def test_the_rows_are_the_bytes_the_jinja_loop_wrote(rows):
    assert str(people_rows(rows, **SHARED)) == REFERENCE.render(rows=rows, **SHARED)


@pytest.mark.parametrize(
    "values",
    [["a&b", "<i>", 'q"', "it's", 7, None, "", "Zoë"], ["a\0b", "<c>", 1], [], ["\0"]],
)
def test_escaped_is_escape_of_each_value(values):
    assert _escaped(values) == [str(escape(value)) for value in values]


def test_the_rows_escape_what_people_typed():
    row = every_kind_of_row()[len(AWKWARD)]  # active, not exempt, the <script> name
    html = str(people_rows([row], **SHARED))
    assert "<script>" not in html and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert 'aria-label="Block &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;7"' in html
    assert "/intranet&amp;co/admin/licenses/people/7/block" in html
    assert isinstance(people_rows([row], **SHARED), Markup)  # not escaped again by Jinja


def test_the_people_page_shows_a_typed_script_as_text(app, client, auth, accounts, make_person):
    make_person("x.script", first_name='<script>alert("hi")</script>', surname="O'Hara & Co")
    auth.login("peopleadmin")
    page = client.get("/admin/licenses/people", query_string={"q": "x.script"})
    html = page.get_data(as_text=True)
    body = html[html.index("<tbody>") : html.index("</tbody>")]
    assert "<script>" not in body
    assert "&lt;script&gt;alert(&#34;hi&#34;)&lt;/script&gt; O&#39;Hara &amp; Co" in body

"""Finding people: the People page's filtered, searched, keyset-paginated list."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import BigInteger, Boolean, String, bindparam, cast, func, or_, select, union_all
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from . import json_rows, reads, seats
from .extension import adapter
from .models import Profile

#: The highest code point: ``key >= q AND key < q + TOP`` selects keys that start with q
#: through the index on every database.
_TOP = "\U0010ffff"


class PersonRow(NamedTuple):
    """What a row of the People page shows (no more: every column is converted per row).

    A named tuple: made four times quicker than a frozen dataclass, 26 times a page."""

    id: int
    username: str
    first_name: str
    surname: str
    email: str
    active: bool
    area: str
    pool: str
    block_reason: str | None
    exempt: bool


@dataclass(frozen=True)
class Page:
    rows: list[PersonRow]
    #: Keyset cursors: the id to continue after, or to go back before (None at an end).
    next_after: int | None
    prev_before: int | None


class _serial_plan(FunctionElement):
    """A column no page uses, selected so that PostgreSQL never plans a page read in parallel.

    The walk's filter is one no index answers, so the planner believes few rows match and
    plans a parallel scan to find them: starting the workers took 10 ms, finding the page
    0.1 ms. A query that calls a function marked PARALLEL UNSAFE is never planned in
    parallel; ``current_schema()`` is one (it may read the catalogs), is stable and has no
    effect. This replaced setting ``max_parallel_workers_per_gather`` to 0 around the walk
    and back, two more statements (round trips) per search; the host's settings are not
    touched at all. SQLite has no parallel plans: there it is a NULL.
    """

    type = String()
    name = "serial_plan"
    inherit_cache = True


@compiles(_serial_plan)
def _serial_plan_default(element, compiler, **kw):
    return "NULL"


@compiles(_serial_plan, "postgresql")
def _serial_plan_postgresql(element, compiler, **kw):
    return "current_schema()"


def _columns(ad):
    """The columns of a PersonRow, in its order."""
    return [
        ad.column("id").label("id"),
        ad.column("username").label("username"),
        ad.column("first_name").label("first_name"),
        ad.column("surname").label("surname"),
        ad.column("email").label("email"),
        ad.column("active").label("active"),
        Profile.area,
        Profile.pool,
        Profile.block_reason,
        Profile.exempt,
    ]


class _like_check(FunctionElement):
    """``column LIKE pattern`` after a key range, except on SQLite, where it is true (1).

    On SQLite the keys compare as code points (BINARY), so the range ``lo <= key < lo +
    U+10FFFF`` holds exactly the keys that start with the text and the LIKE drops nothing; but
    a LIKE whose pattern is a bound parameter makes SQLite prepare the statement again on every
    run (its LIKE optimisation depends on the value): 0.08 ms of a 0.14 ms search, twice per
    search. On PostgreSQL a column's collation may order text otherwise; there the LIKE drops
    what such a collation puts in the range.
    """

    type = Boolean()
    name = "like_check"
    inherit_cache = True


@compiles(_like_check)
def _like_check_default(element, compiler, **kw):
    return compiler.process(element.clauses, **kw)


@compiles(_like_check, "sqlite")
def _like_check_sqlite(element, compiler, **kw):
    return "1"


def _prefix(column, text: str | None = None):
    """``column`` starts with the search text: a range an index answers, and a LIKE (on
    databases that need it, ``_like_check``).

    Without ``text``, with the bound parameters ``lo``, ``hi`` and ``like`` (``_search_params``)
    so that the statement is built once and reused for every search.
    """
    if text is None:
        lo, hi, like = bindparam("lo"), bindparam("hi"), bindparam("like")
    else:
        lo, hi, like = _search_params(text).values()
    return (column >= lo) & (column < hi) & _like_check(column.like(like, escape="\\"))


def _search_params(text: str) -> dict[str, str]:
    """The bound values of a prefix search for ``text`` (already cleaned)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return {"lo": text, "hi": text + _TOP, "like": escaped + "%"}


#: A search matching fewer profiles than this is answered from the search keys' indexes; a
#: broader one by walking people in id order, which fills a page within a few thousand rows.
#: (Measured at 1,000,000 profiles: sorting 90,000 matches for a page took 0.4 s, walking
#: in id order 1 ms; for a prefix matching nothing, the index answers at once and the walk
#: reads every row.) See docs/performance.md.
NARROW_SEARCH = 2000

#: A walk first reads at most this many ids from its cursor (about 5 ms on SQLite). Most
#: broad searches fill a page there; when one does not and there are ids beyond, its matches
#: lie further on (a prefix of the newest accounts, say ``user099`` at 1,000,000: the walk
#: read 990,000 rows, 200 ms), and if the keys hold fewer than WIDE_SEARCH entries for it the
#: page is read from the key indexes instead (10 ms in all for those 10,000); else the walk
#: goes on past the window, as it did before there was one.
WALK_WINDOW = 20_000
WIDE_SEARCH = 50_000


def _keys():
    return (Profile.username_key, Profile.first_name_key, Profile.surname_key, Profile.email_key)


def _search_text(text: str) -> str:
    """What a search looks for: printable characters, lower-cased, in normal form C (as the
    keys are), no longer than a key."""
    return seats._key("".join(ch for ch in text if ch.isprintable()))


def search_filter(text: str):
    """Case-insensitive prefix search on username, first name, surname and email."""
    text = _search_text(text)
    return or_(*(_prefix(key, text) for key in _keys()))


@functools.cache
def _narrow_statement():
    """How many index entries the four key ranges hold together, counted up to ``narrow``:
    one LIMIT over their UNION ALL, so the database stops reading there. The keys are read,
    not the ids, so that each range is an index-only scan on PostgreSQL too (reading the ids,
    it built a bitmap of all 90,000 entries of a broad search: 8 ms instead of 0.4)."""
    ranges = [select(key.label("key")).where(_prefix(key)) for key in _keys()]
    entries = union_all(*ranges).limit(bindparam("narrow")).subquery()
    return select(func.count()).select_from(entries)


def narrow_search(session, text: str) -> bool:
    """True when the search matches fewer than NARROW_SEARCH profiles (index-only counts)."""
    return _read(session, _narrow_statement(), _narrow_params(text)).scalar_one() < NARROW_SEARCH


def _narrow_params(text: str) -> dict:
    return {**_search_params(_search_text(text)), "narrow": NARROW_SEARCH}


@functools.cache
def _narrow_column():
    """``_narrow_statement`` as a column (``narrow_count``) of another select."""
    return _narrow_statement().scalar_subquery().label("narrow_count")


def counted_with(search: str | None) -> tuple[tuple, dict]:
    """For a search, the column that counts its matches (as ``narrow_search`` does) and its
    bound values, for the caller to read with its own figures and hand to ``page`` as
    ``counted``: one statement fewer per search (on PostgreSQL a round trip). For no
    search, nothing."""
    if not search:
        return (), {}
    return (_narrow_column(),), _narrow_params(search)


def read_with(session, *, after=None, before=None, size=50, **filters) -> tuple[tuple, dict]:
    """What the caller reads with its own figures and hands to ``page`` as ``counted``, with
    the bound values: for a search its count (``counted_with``); without one, on
    PostgreSQL, the page of people itself (``people_rows``, a JSON column, json_rows), so
    that such a page is one statement of its own: the figures.

    Elsewhere the page is read on its own. On SQLite, where a statement is a call inside the
    process and not a round trip, building and decoding the JSON took longer than the
    statement it saved (0.68 against 0.52 ms of CPU for the figures and the page; on
    PostgreSQL 0.60 against 0.70 ms of the app's, and a round trip less)."""
    if filters.get("search"):
        return counted_with(filters["search"])
    if reads.connection(session).dialect.name != "postgresql":
        return (), {}
    ad = adapter()
    shape, params = _shape(None, filters, size)
    column = _rows_column(ad, shape, _direction(after, before))
    if column is None:  # the host's columns are not all JSON's: ``page`` reads on its own
        return (), {}
    params["cursor"] = before if before is not None else after
    return (column,), params


@functools.lru_cache(maxsize=256)
def _rows_column(ad, shape: tuple, direction: str | None):
    """The rows of ``_page_statement`` as one column, ``people_rows`` (in its id order), or
    None when JSON cannot give back one of the host's columns (json_rows.readable)."""
    statement = _page_statement(ad, shape, direction)
    if not json_rows.readable(statement):
        return None
    id_col = statement.selected_columns.id
    order = id_col.desc() if direction == "before" else id_col
    return json_rows.column(statement, order_by=(order,), label="people_rows")


def _walk_filter():
    """The search filter in a form no index answers, so the database walks people in id
    order and stops when the page is full (for searches matching many people)."""
    return or_(*(_prefix(func.coalesce(key, "")) for key in _keys()))


def _matching_ids():
    return union_all(*(select(Profile.user_id).where(_prefix(key)) for key in _keys()))


def filtered(*, search=None, state=None, area=None, pool=None, reason=None, narrow=None):
    """A select of people (host user joined with profile) matching the filters.

    ``narrow`` (from ``narrow_search``) chooses how a search is answered; the people found
    are the same either way.
    """
    query = _filtered(
        adapter(),
        "any" if search and narrow is None else "narrow" if search and narrow else
        "walk" if search else None,
        state, bool(area), bool(pool), bool(reason),
    )  # fmt: skip
    return query.params(**_filter_params(search, area, pool, reason))


def _filter_params(search, area, pool, reason) -> dict:
    params = {"area": area, "pool": pool, "reason": reason}
    if search:
        params.update(_search_params(_search_text(search)))
    return params


@functools.lru_cache(maxsize=256)
def _filtered(ad, search: str | None, state, area: bool, pool: bool, reason: bool):
    """The select for one combination of filters, with the values as bound parameters.

    Built once per combination (and adapter) and reused: building the expression took
    longer than running it (1.5 ms a page).
    """
    id_col = ad.column("id")
    query = select(*_columns(ad)).join_from(ad.model, Profile, Profile.user_id == id_col)
    if search == "any":
        query = query.where(or_(*(_prefix(key) for key in _keys())))
    elif search == "narrow":
        query = query.where(id_col.in_(_matching_ids()))
    elif search == "walk":
        query = query.where(_walk_filter())
    if state == "active":
        query = query.where(ad.column("active").is_(True))
    elif state == "blocked":
        query = query.where(ad.column("active").is_(False))
    if area:
        query = query.where(Profile.area == bindparam("area"))
    if pool:
        query = query.where(Profile.pool == bindparam("pool"))
    if reason:
        query = query.where(Profile.block_reason == bindparam("reason"))
    return query


@functools.lru_cache(maxsize=256)
def _page_statement(ad, shape: tuple, direction: str | None):
    """``_filtered`` for ``shape``, after or before the ``cursor``, ``size`` + 1 rows (and,
    last, the ``_serial_plan`` column)."""
    id_col = ad.column("id")
    mode, *filters = shape
    query = _filtered(ad, "walk" if mode == "window" else mode, *filters)
    query = query.add_columns(_serial_plan().label("serial_plan"))
    if mode == "window":
        query = query.where(_in_window(id_col, direction))
    # The cursor on both sides of the join, as the window (``_in_window``): PostgreSQL walks
    # the profiles, and with the cursor on the host's ids alone it read every profile before
    # it (paging deep into q=an took 145 ms).
    cursor = bindparam("cursor")
    if direction == "before":
        return (
            query.where(id_col < cursor, Profile.user_id < cursor)
            .order_by(id_col.desc())
            .limit(bindparam("size"))
        )
    if direction == "after":
        query = query.where(id_col > cursor, Profile.user_id > cursor)
    return query.order_by(id_col).limit(bindparam("size"))


def _window_end(id_col, direction: str | None):
    """The last id of a walk's window (``window`` ids from the ``cursor`` or the first id;
    before a cursor, the first)."""
    window = bindparam("window", type_=BigInteger)
    if direction == "before":
        return cast(bindparam("cursor"), BigInteger) - window
    if direction == "after":
        start = bindparam("cursor")
    else:
        start = select(func.min(id_col)).scalar_subquery()
    return cast(start, BigInteger) + window


def _in_window(id_col, direction: str | None):
    """The window on both sides of the join: the planner walks whichever table it likes
    (SQLite the host's, PostgreSQL the profiles) and bounds that walk only by a condition
    on its own id."""
    end = _window_end(id_col, direction)
    if direction == "before":
        return (id_col >= end) & (Profile.user_id >= end)
    return (id_col <= end) & (Profile.user_id <= end)


@functools.lru_cache(maxsize=16)
def _beyond_window_statement(ad, direction: str | None):
    """Whether any person's id lies beyond the window (an id, or none)."""
    id_col = ad.column("id")
    end = _window_end(id_col, direction)
    beyond = id_col < end if direction == "before" else id_col > end
    return select(id_col).where(beyond).limit(1)


def _read(session, statement, params):
    """Run a read of the People page on the page's connection (``reads.connection``).

    Its statements are Core selects of columns, built once: the ORM's execution path (made
    for loading objects) doubled what running one cost.
    """
    return reads.connection(session).execute(statement, params)


def page(session, *, after=None, before=None, size=50, counted=None, **filters) -> Page:
    """One page of people ordered by id, after or before a keyset cursor.

    ``counted``: a row read with the columns of ``read_with`` (for a search its
    ``narrow_count``, else the page's ``people_rows``); without it, a search counts its
    matches first (``narrow_search``).
    """
    ad = adapter()
    search = filters.get("search")
    if counted is not None and "people_rows" in counted:
        shape, _ = _shape(None, filters, size)
        statement = _page_statement(ad, shape, _direction(after, before))
        return _as_page(json_rows.rows(counted["people_rows"], statement), after, before, size)
    mode = None
    if search and counted is not None:
        mode = "narrow" if counted["narrow_count"] < NARROW_SEARCH else "walk"
    elif search:
        mode = "narrow" if narrow_search(session, search) else "walk"
    shape, params = _shape(mode, filters, size)
    return _page(session, ad, shape, params, after, before, size)


def _shape(mode, filters, size) -> tuple[tuple, dict]:
    """The shape of a page's statement (``_page_statement``) and its bound values but the
    cursor."""
    shape = (
        mode,
        filters.get("state"),
        *(bool(filters.get(k)) for k in ("area", "pool", "reason")),
    )
    params = _filter_params(
        filters.get("search"), filters.get("area"), filters.get("pool"), filters.get("reason")
    )
    params["size"] = size + 1
    return shape, params


def _direction(after, before) -> str | None:
    return "before" if before is not None else "after" if after is not None else None


def _page(session, ad, shape, params, after, before, size) -> Page:
    """The page of ``page``: its statement for ``shape``, run after or before a cursor.

    A walk reads its window first (``WALK_WINDOW``); the people found are those of the
    unbounded walk whichever way the page is read.
    """
    mode, *filters = shape
    direction = _direction(after, before)
    params = {**params, "cursor": before if before is not None else after}
    if mode != "walk":
        return _as_page(_rows(session, ad, shape, direction, params), after, before, size)
    params["window"] = WALK_WINDOW
    rows = _rows(session, ad, ("window", *filters), direction, params)
    beyond = _beyond_window_statement(ad, direction)
    if len(rows) > size or _read(session, beyond, params).first() is None:
        return _as_page(rows, after, before, size)  # full, or no id lies beyond the window
    wide = _read(session, _narrow_statement(), {**params, "narrow": WIDE_SEARCH}).scalar_one()
    mode = "narrow" if wide < WIDE_SEARCH else "walk"
    return _as_page(_rows(session, ad, (mode, *filters), direction, params), after, before, size)


def _rows(session, ad, shape, direction, params) -> list:
    """Up to ``size`` + 1 rows of the statement for ``shape``: after the cursor in id order,
    or before it from the nearest back."""
    return _read(session, _page_statement(ad, shape, direction), params).all()


def _as_page(rows, after, before, size) -> Page:
    """``rows`` (of ``_rows``) as a Page, with the cursors to go on."""
    if before is not None:
        more_before = len(rows) > size
        rows = list(reversed(rows[:size]))
        people = [PersonRow._make(row[:-1]) for row in rows]
        return Page(
            people,
            next_after=people[-1].id if people else None,
            prev_before=people[0].id if people and more_before else None,
        )
    people = [PersonRow._make(row[:-1]) for row in rows[:size]]
    return Page(
        people,
        next_after=people[-1].id if len(rows) > size else None,
        prev_before=people[0].id if people and after is not None else None,
    )

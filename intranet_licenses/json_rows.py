"""The rows of a small select, read as one JSON column of another select.

A page that needs a few short lists besides its figures (the License page: the outbox's
last and unsent messages, the newest license requests) reads them in the figures'
statement instead of in one statement each: on PostgreSQL every statement is a round trip,
parsed and planned again (see docs/performance.md, section 1).

``column(statement, order_by=..., label=...)`` is a scalar subquery giving the rows of
``statement`` as a JSON array of arrays (PostgreSQL's ``json_agg``, SQLite's
``json_group_array``); ``rows(read, statement)`` turns what the database returned into named
tuples with the statement's column names, in ``order_by`` order, with the values the
statement itself gives. Only columns whose values JSON gives back unchanged are accepted
(``_CONVERTERS``); an empty select reads as ``[]``.
"""

from __future__ import annotations

import functools
import json
from collections import namedtuple
from datetime import datetime
from operator import itemgetter

from sqlalchemy import Boolean, DateTime, Enum, Integer, String, func, select
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import ColumnClause
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.util import ClauseAdapter


class _json_array_agg(FunctionElement):
    """One JSON array (as text) of a JSON array per row of its arguments."""

    name = "json_rows"
    inherit_cache = True


@compiles(_json_array_agg)
def _json_array_agg_default(element, compiler, **kw):
    raise CompileError("json_rows supports SQLite and PostgreSQL only.")


@compiles(_json_array_agg, "sqlite")
def _json_array_agg_sqlite(element, compiler, **kw):
    return f"json_group_array(json_array({compiler.process(element.clauses, **kw)}))"


@compiles(_json_array_agg, "postgresql")
def _json_array_agg_postgresql(element, compiler, **kw):
    # As text: psycopg decodes a json value of every row it fetches, and the caller's
    # select may repeat the column on several rows; ``rows`` decodes the one it uses.
    return f"CAST(json_agg(json_build_array({compiler.process(element.clauses, **kw)})) AS TEXT)"


def _as_is(value):
    return value


#: How a value JSON gave back becomes the column's value again, by the column's type. A
#: type not here is refused by ``column``: JSON would give back a date or an enum member as
#: text, a Decimal as a float.
_CONVERTERS = (
    (DateTime, datetime.fromisoformat),  # "2026-12-04 09:44:00.123456", or with a "T"
    (Boolean, bool),  # SQLite's 0 and 1
    (Integer, _as_is),  # BigInteger too
    (String, _as_is),  # Text too
)


def _converter(column):
    type_ = column.type
    if not isinstance(type_, Enum) and not getattr(type_, "timezone", False):
        for kind, convert in _CONVERTERS:
            if isinstance(type_, kind):
                return convert
    raise TypeError(
        f"json_rows cannot give back column {column.key!r} ({type_!r}) unchanged; "
        "read it with a select of its own."
    )


def column(statement, *, order_by, label: str):
    """The rows of ``statement`` (a select of columns, with its LIMIT if any), ordered by
    ``order_by`` (which replaces its ORDER BY), as one labelled column of another select.

    The aggregate's own order is not defined (SQLite before 3.44 has no ORDER BY in an
    aggregate), so each row carries its place, ``row_number() OVER (ORDER BY ...)`` over
    the rows the LIMIT kept, and ``rows`` sorts by it. ``order_by`` may refer only to
    columns the statement selects; a column of a type JSON cannot give back is refused.
    """
    _reader(statement)  # refuses a column JSON cannot give back
    # An ORM attribute as it is (``Model.name``) is its column: checked and adapted as one.
    order_by = [getattr(e, "__clause_element__", lambda e=e: e)() for e in order_by]
    selected = list(statement.selected_columns)
    # A column the statement selects under a label may be named by itself too.
    selected_ids = {id(c) for c in selected} | {id(getattr(c, "element", c)) for c in selected}
    for expression in order_by:
        for element in visitors.iterate(expression):
            if isinstance(element, ColumnClause) and id(element) not in selected_ids:
                raise ValueError(f"json_rows: {element} is in order_by but not selected.")
    inner = statement.order_by(None).order_by(*order_by).subquery()
    ordinal = func.row_number().over(order_by=[ClauseAdapter(inner).traverse(e) for e in order_by])
    # Numbered in a select of their own: a window function cannot be an aggregate's argument.
    numbered = select(ordinal.label("json_rows_ordinal"), *inner.c).subquery()
    values = [numbered.c.json_rows_ordinal, *(numbered.c[c.key] for c in selected)]
    return select(_json_array_agg(*values)).scalar_subquery().label(label)


def readable(statement) -> bool:
    """Whether ``column`` takes ``statement``: JSON gives back every column it selects
    unchanged (a host's own column type, a TypeDecorator, it does not)."""
    try:
        _reader(statement)
    except TypeError:
        return False
    return True


def rows(read, statement) -> list:
    """The rows ``column(statement, ...)`` read, as named tuples, in order.

    ``read`` is what the database gave: JSON text, or None (PostgreSQL's aggregate over no
    rows).
    """
    if read is None:
        return []
    row_type, converted = _reader(statement)
    found = sorted(json.loads(read), key=itemgetter(0))
    for values in found:
        for place, convert in converted:
            if values[place] is not None:
                values[place] = convert(values[place])
    return [row_type._make(values[1:]) for values in found]


@functools.cache
def _reader(statement) -> tuple[type, list]:
    """The named tuple of ``statement``'s rows, and the place in a JSON row (after its
    ordinal) and converter of each column whose value JSON does not give as it is (built
    once per statement: the License and People pages read their lists on every view)."""
    selected = list(statement.selected_columns)
    row_type = namedtuple("JsonRow", [c.key for c in selected])
    converters = [_converter(c) for c in selected]
    converted = [(place, f) for place, f in enumerate(converters, start=1) if f is not _as_is]
    return row_type, converted

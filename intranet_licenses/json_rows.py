"""The rows of a small select, read as one JSON column of another select.

A page that needs a few short lists besides its figures (the License page: the outbox's
last and unsent messages, the newest license requests) reads them in the figures'
statement instead of one statement each. On PostgreSQL every statement is a round trip,
parsed and planned again (psycopg forgets its prepared statements at every ROLLBACK): read
apart, the License page's two lists cost about 0.3 ms more of the app's CPU and 0.15 ms more
of the server's per view, and the page served a sixth fewer requests/s (measured side by
side; see docs/performance.md). The lists are short (at most 51 messages without their
bodies, 50 requests) and uncorrelated: the database computes them once, though it sends
them with each of the figures' rows.

``column(statement, order_by=..., label=...)`` is a scalar subquery giving the rows of
``statement`` as a JSON array of arrays (PostgreSQL's ``json_agg``, SQLite's
``json_group_array``); ``rows(value, statement)`` turns what the database returned into
named tuples with the statement's column names, in ``order_by`` order, the timestamps
as ``datetime`` again. An empty select reads as ``[]``.
"""

from __future__ import annotations

import json
from collections import namedtuple
from datetime import datetime

from sqlalchemy import Boolean, DateTime, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

#: The label of the ordinal each row carries (its place in ``order_by``).
_ORDINAL = "json_rows_ordinal"


class _json_array_agg(FunctionElement):
    """One JSON array of a JSON array per row of its arguments."""

    name = "json_array_agg"
    inherit_cache = True


@compiles(_json_array_agg)
def _json_array_agg_default(element, compiler, **kw):
    return f"json_group_array(json_array({compiler.process(element.clauses, **kw)}))"


@compiles(_json_array_agg, "postgresql")
def _json_array_agg_postgresql(element, compiler, **kw):
    return f"json_agg(json_build_array({compiler.process(element.clauses, **kw)}))"


def column(statement, *, order_by, label: str):
    """The rows of ``statement`` (a select of columns, with its own LIMIT), ordered by
    ``order_by``, as one labelled column to add to another select.

    The aggregate's own order is not defined (SQLite before 3.44 has no ORDER BY in an
    aggregate), so each row carries its place, ``row_number() OVER (ORDER BY ...)``, and
    ``rows`` sorts by it.
    """
    ordinal = func.row_number().over(order_by=order_by).label(_ORDINAL)
    inner = statement.add_columns(ordinal).subquery()
    values = [inner.c[_ORDINAL], *(inner.c[c.key] for c in statement.selected_columns)]
    return select(_json_array_agg(*values)).scalar_subquery().label(label)


def rows(value, statement) -> list:
    """The rows ``column(statement, ...)`` read, as named tuples, in order.

    ``value`` is what the database gave: text on SQLite, already decoded on PostgreSQL
    (psycopg loads ``json``), None for no rows on PostgreSQL.
    """
    if value is None:
        return []
    if isinstance(value, str | bytes):
        value = json.loads(value)
    columns = list(statement.selected_columns)
    row_type = _row_type(tuple(c.key for c in columns))
    converters = [_converter(c.type) for c in columns]
    return [
        row_type._make(
            v if v is None or convert is None else convert(v)
            for convert, v in zip(converters, values[1:], strict=True)
        )
        for values in sorted(value, key=lambda values: values[0])
    ]


_row_types: dict[tuple, type] = {}


def _row_type(names: tuple) -> type:
    row_type = _row_types.get(names)
    if row_type is None:
        row_type = _row_types[names] = namedtuple("JsonRow", names)
    return row_type


def _converter(type_):
    """How a JSON value becomes the column's Python value again (None: it already is)."""
    if isinstance(type_, DateTime):
        return datetime.fromisoformat  # "2026-12-04 09:44:00.123456", or with a "T"
    if isinstance(type_, Boolean):
        return bool  # SQLite's 0 and 1
    return None

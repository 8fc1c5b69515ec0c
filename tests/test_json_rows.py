"""json_rows: a select's rows read as one JSON column of another select give back exactly
what the select itself gives, in its order, on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from intranet_licenses import json_rows

_metadata = sa.MetaData()
_things = sa.Table(
    "json_rows_things",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64)),
    sa.Column("note", sa.Text),
    sa.Column("at", sa.DateTime),
    sa.Column("done_at", sa.DateTime),
    sa.Column("flag", sa.Boolean),
    sa.Column("count", sa.Integer),
)

#: Every kind of value: quotes, backslashes, a newline, non-ASCII, a JSON-looking text,
#: microseconds and none, NULLs.
_ROWS = [
    {"id": 1, "name": 'say "hi"', "note": "back\\slash\nnew line", "flag": True, "count": 0,
     "at": datetime(2026, 12, 4, 9, 44, 0, 123456), "done_at": None},
    {"id": 2, "name": "Zoë Ångström", "note": "[1, 2]", "flag": False, "count": -5,
     "at": datetime(2026, 1, 1), "done_at": datetime(2026, 1, 2, 3, 4, 5)},
    {"id": 3, "name": "", "note": None, "flag": None, "count": None,
     "at": datetime(1999, 12, 31, 23, 59, 59, 999999), "done_at": None},
] + [
    {"id": 10 + n, "name": f"n{n:02d}", "note": "", "flag": n % 2 == 0, "count": n,
     "at": datetime(2026, 6, 1, n % 24), "done_at": None}
    for n in range(60)
]  # fmt: skip


def _check(engine) -> None:
    _metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(_things.insert(), _ROWS)
        # (statement, order): the order replaces the statement's own, before its LIMIT
        statements = [
            (sa.select(_things).limit(50), (_things.c.at.desc(), _things.c.id)),
            (sa.select(_things.c.name, _things.c.at).where(_things.c.count > 3),
             (_things.c.name.desc(),)),
        ]  # fmt: skip
        with engine.connect() as conn:
            for statement, order in statements:
                column = json_rows.column(statement, order_by=order, label="things")
                statement = statement.order_by(*order)
                value = conn.execute(sa.select(column)).scalar_one()
                read = json_rows.rows(value, statement)
                expected = conn.execute(statement).all()
                assert _typed(read) == _typed(expected)  # True, not 1; a datetime, not text
                assert read[0]._fields == tuple(expected[0]._fields)
            nothing = sa.select(_things).where(_things.c.id < 0)
            column = json_rows.column(nothing, order_by=(_things.c.id,), label="things")
            assert json_rows.rows(conn.execute(sa.select(column)).scalar_one(), nothing) == []
    finally:
        _metadata.drop_all(engine)
        engine.dispose()


def _typed(rows) -> list:
    return [[(type(value), value) for value in row] for row in rows]


def test_rows_read_as_json_are_the_rows_of_the_select_on_sqlite(tmp_path):
    _check(sa.create_engine(f"sqlite:///{tmp_path / 'things.db'}"))


@pytest.mark.postgres
def test_rows_read_as_json_are_the_rows_of_the_select_on_postgresql(postgres_url):
    _check(sa.create_engine(postgres_url))


class _UtcDateTime(sa.TypeDecorator):
    impl = sa.DateTime
    cache_ok = True


@pytest.mark.parametrize(
    "type_",
    [sa.Date(), sa.Numeric(10, 2), sa.Float(), sa.Enum("red", "blue"), sa.Uuid(),
     sa.DateTime(timezone=True), _UtcDateTime()],
    ids=lambda t: type(t).__name__,
)  # fmt: skip
def test_a_column_json_cannot_give_back_unchanged_is_refused(type_):
    """A date or an enum member would come back as text, a Decimal as a float: refused
    when the column is built, not changed when it is read."""
    table = sa.Table("json_rows_typed", sa.MetaData(), sa.Column("id", sa.Integer),
                     sa.Column("value", type_))  # fmt: skip
    with pytest.raises(TypeError, match="'value'"):
        json_rows.column(sa.select(table), order_by=(table.c.id,), label="typed")


def test_an_order_on_a_column_not_selected_is_refused():
    with pytest.raises(ValueError, match="not selected"):
        json_rows.column(sa.select(_things.c.name), order_by=(_things.c.id,), label="things")


class _Base(DeclarativeBase):
    pass


class _Thing(_Base):
    __tablename__ = "json_rows_orm_things"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    rank: Mapped[int]


def test_an_order_on_an_orm_attribute_not_selected_is_refused():
    """A bare ORM attribute is checked as its column (unchecked, it was read from the table
    beside the subquery: every row once per row of the table)."""
    statement = sa.select(_Thing.id, _Thing.name)
    for order in (_Thing.rank, _Thing.rank.desc()):
        with pytest.raises(ValueError, match="not selected"):
            json_rows.column(statement, order_by=(order,), label="things")
    column = json_rows.column(statement, order_by=(_Thing.name,), label="things")
    engine = sa.create_engine("sqlite://")
    _Base.metadata.create_all(engine)
    with engine.begin() as conn:
        things = [{"id": n, "name": f"t{3 - n}", "rank": n} for n in range(4)]
        conn.execute(sa.insert(_Thing), things)
        read = conn.execute(sa.select(column)).scalar_one()
    engine.dispose()
    # Each row once (not once per row of the table), in the order asked for.
    found = [(r.id, r.name) for r in json_rows.rows(read, statement)]
    assert found == [(3, "t0"), (2, "t1"), (1, "t2"), (0, "t3")]
    assert json_rows.readable(statement)


def test_readable_says_whether_json_gives_every_column_back():
    class Lower(sa.types.TypeDecorator):
        impl = sa.String(20)
        cache_ok = True

    table = sa.Table("json_rows_typed", sa.MetaData(), sa.Column("id", sa.Integer),
                     sa.Column("email", Lower()))  # fmt: skip
    assert json_rows.readable(sa.select(table.c.id))
    assert not json_rows.readable(sa.select(table.c.id, table.c.email))

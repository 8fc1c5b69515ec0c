"""How a page that only read ends its transaction: by COMMIT, so that PostgreSQL keeps its plans.

psycopg prepares a statement on the server after its fifth run on a connection, and discards
every prepared statement of the connection (DEALLOCATE ALL) at each ROLLBACK. A request that
wrote nothing is ended by the host's teardown (Flask-SQLAlchemy's ``session.remove()``),
which rolls back: so each page's statements were parsed and planned again on every request.
At 1,000,000 profiles that was most of the database's work for a page (server CPU per
request of the License page 0.66 ms, with its statement prepared 0.16; the People page 0.55
and 0.30; a search 1.23 and 0.48; see docs/performance.md).

A transaction that wrote nothing ends the same by COMMIT as by ROLLBACK, so the License and
People pages, once rendered, commit it themselves (``end``), and only when it wrote nothing:
PostgreSQL had given it no transaction id when the page read its figures
(``pg_current_xact_id_if_assigned()``, the column ``wrote_nothing`` of that statement; every
statement the page runs after it is a read of its own), and the session holds no change not
yet flushed. Whatever a host wrote before the page stays the host's to commit or roll back.
On other databases the column is false and the transaction is left to the host: SQLite
keeps its compiled statements across transactions.
"""

from __future__ import annotations

import functools

from sqlalchemy import Boolean, false
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


class _wrote_nothing(FunctionElement):
    """True on PostgreSQL while the transaction has written nothing; false elsewhere."""

    type = Boolean()
    name = "wrote_nothing"
    inherit_cache = True


@compiles(_wrote_nothing)
def _wrote_nothing_default(element, compiler, **kw):
    return compiler.process(false(), **kw)


@compiles(_wrote_nothing, "postgresql")
def _wrote_nothing_postgresql(element, compiler, **kw):
    return "(pg_current_xact_id_if_assigned() IS NULL)"


@functools.cache
def wrote_nothing():
    """The labelled column ``wrote_nothing``, to read with a page's figures (one instance,
    so that the statements holding it are built once)."""
    return _wrote_nothing().label("wrote_nothing")


def end(session, row) -> None:
    """End the page's transaction by COMMIT if ``row`` (read with ``wrote_nothing``) says it
    wrote nothing and the session holds no unflushed change; else leave it to the host.

    Call it after rendering: the commit expires the session's objects (the signed-in user),
    and a template reading them afterwards would load them again in a new transaction.
    """
    if row["wrote_nothing"] and not (session.new or session.dirty or session.deleted):
        session.commit()

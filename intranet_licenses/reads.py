"""Where the pages read their figures and people: the host's session, or an engine of their own.

By default a page reads on the host's session, in the request's transaction. On PostgreSQL
that costs a plan per statement per view: psycopg prepares a statement on the server after
its fifth run on a connection, and discards every prepared statement of the connection
(DEALLOCATE ALL) at each ROLLBACK; a request that wrote nothing ends with one (the host's
teardown, Flask-SQLAlchemy's ``session.remove()``), so the pages' statements were parsed
and planned again on every view (docs/performance.md, section 1).

A host can give the pages an engine of their own: a Flask-SQLAlchemy bind on the same
database, named in ``LICENSES_READ_BIND``. The pages then read on one connection of it per
request, in autocommit mode: no BEGIN, no ROLLBACK, no transaction at all, so psycopg keeps
their statements prepared, and the host's own pages, which roll back on the host's
connections, do not take the plans away. The host's session and transaction are not touched
by the reads (committing a page's transaction when it had written nothing was tried and
reverted: docs/performance.md, section 1). What the request changed and did not commit is
not seen by these reads; the pages that use them (License, Summary, People) change nothing
before they read.
"""

from __future__ import annotations

from flask import g

from .extension import adapter, config

_CONNECTION = "licenses_read_connection"


def connection(session):
    """The connection a page reads on: the read bind's, opened once per request, or else the
    session's (flushed first, as an ORM query would, so that it sees what the request
    added)."""
    bind = config("READ_BIND")
    if not bind:
        if session.autoflush:
            session.flush()
        return session.connection()
    conn = g.get(_CONNECTION)
    if conn is None:
        engine = adapter().db.engines[bind]
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        setattr(g, _CONNECTION, conn)
    return conn


def close(_exc=None) -> None:
    """teardown_appcontext: give the request's read connection back to its pool."""
    conn = g.pop(_CONNECTION, None)
    if conn is not None:
        conn.close()

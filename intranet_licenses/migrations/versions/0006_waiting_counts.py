"""People waiting for a license, counted per pool by triggers (``licenses_waiting_count``).

The License, summary and People pages show how many people wait in each pool. Counting
them from an index took time in proportion to their number (0.6 ms for 16,667 on SQLite,
1.2 ms on PostgreSQL, on every page); the count now lives in ``licenses_waiting_count``,
kept by triggers on ``licenses_profile``, so that the seat service, the bulk paths'
set-based statements and the host's own INSERT, UPDATE and DELETE statements all keep it
right. (TRUNCATE, SQLite's ``INSERT OR REPLACE`` and a table rebuilt by a batch migration
fire no such trigger: run ``flask licenses recount`` after them; ``tests/test_schema.py``
checks that the triggers exist at the head revision.)

A waiting person is a profile with ``block_reason = 'license'``; it counts in its ``pool``,
and a pool's count is the sum of its rows. SQLite has one writer at a time: its triggers
change the pool's row ``tx = 0``. On PostgreSQL a trigger adds the change to a row of its
own transaction (``tx = txid_current()``): no transaction waits for another over the count,
so two transactions that make people wait in two pools in opposite orders cannot deadlock,
and none touches the seat counter rows that admissions lock. ``seats.fold_waiting`` adds
committed rows into ``tx = 0``: every transaction that changed who waits does at its commit
(skipping a pool another fold holds), and so do a directory sync and ``recount``.

Revision ID: 0006_waiting_counts
Revises: 0005_nfc_keys
Create Date: 2026-12-04 06:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_waiting_counts"
down_revision = "0005_nfc_keys"
branch_labels = None
depends_on = None

_FILL = """
INSERT INTO licenses_waiting_count (pool, tx, waiting)
SELECT c.pool, 0, (SELECT count(*) FROM licenses_profile p
                   WHERE p.block_reason = 'license' AND p.pool = c.pool)
FROM licenses_seat_counter c
"""

# SQLite: one trigger per kind of change, the same arithmetic. "was" and "now" are the pool
# a profile waited in before and after the change (NULL when it did not wait).
_SQLITE_WAS = "(CASE WHEN OLD.block_reason = 'license' THEN OLD.pool END)"
_SQLITE_NOW = "(CASE WHEN NEW.block_reason = 'license' THEN NEW.pool END)"
_SQLITE = [
    """
CREATE TRIGGER licenses_waiting_insert AFTER INSERT ON licenses_profile
WHEN NEW.block_reason = 'license'
BEGIN
    UPDATE licenses_waiting_count SET waiting = waiting + 1 WHERE pool = NEW.pool AND tx = 0;
END
""",
    """
CREATE TRIGGER licenses_waiting_delete AFTER DELETE ON licenses_profile
WHEN OLD.block_reason = 'license'
BEGIN
    UPDATE licenses_waiting_count SET waiting = waiting - 1 WHERE pool = OLD.pool AND tx = 0;
END
""",
    f"""
CREATE TRIGGER licenses_waiting_update AFTER UPDATE OF block_reason, pool ON licenses_profile
WHEN {_SQLITE_WAS} IS NOT {_SQLITE_NOW}
BEGIN
    UPDATE licenses_waiting_count
    SET waiting = waiting - (pool IS {_SQLITE_WAS}) + (pool IS {_SQLITE_NOW})
    WHERE pool IN (OLD.pool, NEW.pool) AND tx = 0;
END
""",
]

_POSTGRES = [
    """
CREATE OR REPLACE FUNCTION licenses_count_waiting() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was text;
    now_ text;
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.block_reason = 'license' THEN was := OLD.pool; END IF;
    IF TG_OP <> 'DELETE' AND NEW.block_reason = 'license' THEN now_ := NEW.pool; END IF;
    IF was IS DISTINCT FROM now_ THEN
        IF was IS NOT NULL THEN
            INSERT INTO licenses_waiting_count AS c (pool, tx, waiting)
            VALUES (was, txid_current(), -1)
            ON CONFLICT (pool, tx) DO UPDATE SET waiting = c.waiting - 1;
        END IF;
        IF now_ IS NOT NULL THEN
            INSERT INTO licenses_waiting_count AS c (pool, tx, waiting)
            VALUES (now_, txid_current(), 1)
            ON CONFLICT (pool, tx) DO UPDATE SET waiting = c.waiting + 1;
        END IF;
    END IF;
    RETURN NULL;
END
$$
""",
    """
CREATE TRIGGER licenses_waiting_insert AFTER INSERT ON licenses_profile
FOR EACH ROW WHEN (NEW.block_reason = 'license') EXECUTE FUNCTION licenses_count_waiting()
""",
    """
CREATE TRIGGER licenses_waiting_delete AFTER DELETE ON licenses_profile
FOR EACH ROW WHEN (OLD.block_reason = 'license') EXECUTE FUNCTION licenses_count_waiting()
""",
    """
CREATE TRIGGER licenses_waiting_update AFTER UPDATE OF block_reason, pool ON licenses_profile
FOR EACH ROW WHEN (OLD.block_reason = 'license' OR NEW.block_reason = 'license')
EXECUTE FUNCTION licenses_count_waiting()
""",
]

#: The triggers, by name (``tests/test_schema.py`` checks they exist at the head revision).
TRIGGERS = ("licenses_waiting_insert", "licenses_waiting_delete", "licenses_waiting_update")


def _statements() -> list[str]:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        return _SQLITE
    if dialect == "postgresql":
        return _POSTGRES
    raise NotImplementedError(f"No waiting-count triggers for the {dialect} database.")


def upgrade():
    statements = _statements()
    op.create_table(
        "licenses_waiting_count",
        sa.Column("pool", sa.String(length=16), nullable=False),
        sa.Column("tx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("waiting", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("pool", "tx", name=op.f("pk_licenses_waiting_count")),
    )
    op.execute(_FILL)
    for statement in statements:
        op.execute(statement)


def downgrade():
    postgres = op.get_bind().dialect.name == "postgresql"
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER {name}" + (" ON licenses_profile" if postgres else ""))
    if postgres:
        op.execute("DROP FUNCTION licenses_count_waiting()")
    op.drop_table("licenses_waiting_count")

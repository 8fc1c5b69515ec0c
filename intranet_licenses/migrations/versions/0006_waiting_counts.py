"""People waiting for a license, counted per pool beside the seats in use.

The License, summary and People pages show how many people wait in each pool. Counting
them from an index took time in proportion to their number (0.6 ms for 16,667 on SQLite,
on every page); the count now lives in ``licenses_seat_counter.waiting``, kept by triggers
on ``licenses_profile`` so that every writer keeps it right: the seat service, the bulk
paths' set-based statements, the host's own SQL. ``seats.recount`` checks it.

A waiting person is a profile with ``block_reason = 'license'``; it counts in its ``pool``.
One UPDATE per change, over the one or two pools concerned (a move locks both rows in one
statement). On PostgreSQL a transaction that changes who waits in a pool holds that pool's
counter row until it commits, as a transaction that takes a seat there does; the fast
refusal of an admission at a full pool reads the row without waiting for it.

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
UPDATE licenses_seat_counter SET waiting = (
    SELECT count(*) FROM licenses_profile p
    WHERE p.block_reason = 'license' AND p.pool = licenses_seat_counter.pool)
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
    UPDATE licenses_seat_counter SET waiting = waiting + 1 WHERE pool = NEW.pool;
END
""",
    """
CREATE TRIGGER licenses_waiting_delete AFTER DELETE ON licenses_profile
WHEN OLD.block_reason = 'license'
BEGIN
    UPDATE licenses_seat_counter SET waiting = waiting - 1 WHERE pool = OLD.pool;
END
""",
    f"""
CREATE TRIGGER licenses_waiting_update AFTER UPDATE OF block_reason, pool ON licenses_profile
WHEN {_SQLITE_WAS} IS NOT {_SQLITE_NOW}
BEGIN
    UPDATE licenses_seat_counter
    SET waiting = waiting - (pool IS {_SQLITE_WAS}) + (pool IS {_SQLITE_NOW})
    WHERE pool IN (OLD.pool, NEW.pool);
END
""",
]

_POSTGRES = [
    """
CREATE FUNCTION licenses_count_waiting() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was text;
    now_ text;
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.block_reason = 'license' THEN was := OLD.pool; END IF;
    IF TG_OP <> 'DELETE' AND NEW.block_reason = 'license' THEN now_ := NEW.pool; END IF;
    IF was IS DISTINCT FROM now_ THEN
        UPDATE licenses_seat_counter
        SET waiting = waiting - (pool IS NOT DISTINCT FROM was)::int
                              + (pool IS NOT DISTINCT FROM now_)::int
        WHERE pool IN (was, now_);
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

_TRIGGERS = ("licenses_waiting_insert", "licenses_waiting_delete", "licenses_waiting_update")


def _statements() -> list[str]:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        return _SQLITE
    if dialect == "postgresql":
        return _POSTGRES
    raise NotImplementedError(f"No waiting-count triggers for the {dialect} database.")


def upgrade():
    statements = _statements()
    op.add_column(
        "licenses_seat_counter",
        sa.Column("waiting", sa.Integer(), nullable=False, server_default="0"),
    )
    op.execute(_FILL)
    for statement in statements:
        op.execute(statement)


def downgrade():
    postgres = op.get_bind().dialect.name == "postgresql"
    for name in _TRIGGERS:
        op.execute(f"DROP TRIGGER {name}" + (" ON licenses_profile" if postgres else ""))
    if postgres:
        op.execute("DROP FUNCTION licenses_count_waiting()")
    with op.batch_alter_table("licenses_seat_counter") as batch_op:
        batch_op.drop_column("waiting")

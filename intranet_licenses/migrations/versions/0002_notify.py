"""Over-limit episodes per pool and the mail outbox.

Revision ID: 0002_notify
Revises: 0001
Create Date: 2026-12-03 19:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_notify"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    episodes = op.create_table(
        "licenses_episode",
        sa.Column("pool", sa.String(length=16), nullable=False),
        sa.Column("open", sa.Boolean(), nullable=False),
        sa.Column("opened_at", sa.DateTime(), nullable=True),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("pool", name=op.f("pk_licenses_episode")),
    )
    # One row per pool: the row a conditional UPDATE opens (see notifications.py).
    op.bulk_insert(
        episodes, [{"pool": p, "open": False} for p in ("intranet", "extranet", "readonly")]
    )
    # The last license state seen ("" = not seen yet): notice_license_state changes it with a
    # conditional UPDATE, so the row must exist before two processes race for it.
    settings = sa.table("licenses_setting", sa.column("name"), sa.column("value"))
    op.bulk_insert(settings, [{"name": "license_state", "value": ""}])
    op.create_table(
        "licenses_outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("html", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_licenses_outbox")),
    )
    with op.batch_alter_table("licenses_outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_licenses_outbox_pending", ["sent_at", "next_attempt_at"], unique=False
        )


def downgrade():
    op.execute("DELETE FROM licenses_setting WHERE name = 'license_state'")
    with op.batch_alter_table("licenses_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_licenses_outbox_pending")
    op.drop_table("licenses_outbox")
    op.drop_table("licenses_episode")

"""License requests.

Revision ID: 0003_request
Revises: 0002_notify
Create Date: 2026-12-03 19:15:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_request"
down_revision = "0002_notify"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "licenses_request",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("seats", sa.Integer(), nullable=False),
        sa.Column("pool", sa.String(length=16), nullable=True),
        sa.Column("from_pool", sa.String(length=16), nullable=True),
        sa.Column("to_pool", sa.String(length=16), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("requester_name", sa.String(length=255), nullable=False),
        sa.Column("requester_email", sa.String(length=320), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("limits_before", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=True),
        sa.Column("submission_key", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_licenses_request")),
        sa.UniqueConstraint("submission_key", name=op.f("uq_licenses_request_submission_key")),
    )


def downgrade():
    op.drop_table("licenses_request")

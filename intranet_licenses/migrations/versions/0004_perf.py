"""Counting the people waiting for a license per pool from an index (pages at 1,000,000).

Revision ID: 0004_perf
Revises: 0003_request
Create Date: 2026-12-03 20:00:00
"""

from alembic import op

revision = "0004_perf"
down_revision = "0003_request"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index(
        "ix_licenses_profile_waiting", "licenses_profile", ["block_reason", "pool"], unique=False
    )


def downgrade():
    op.drop_index("ix_licenses_profile_waiting", table_name="licenses_profile")

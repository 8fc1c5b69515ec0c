"""Search keys in Unicode normal form C, as seats._key now makes them ('é' typed as one
character or as 'e' plus U+0301 is one username).

Only keys with a letter outside ASCII can change; the rest are read and left alone. A
username key whose normal form another profile already holds (two people who were told
apart only by the encoding of an accent) is left as it was and named in a warning: a
People administrator decides which of the two to keep.

Revision ID: 0005_nfc_keys
Revises: 0004_perf
Create Date: 2026-12-04 04:00:00
"""

import logging
import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0005_nfc_keys"
down_revision = "0004_perf"
branch_labels = None
depends_on = None

_KEYS = ("username_key", "first_name_key", "surname_key", "email_key")
_profile = sa.table(
    "licenses_profile", sa.column("user_id", sa.Integer), *(sa.column(k, sa.String) for k in _KEYS)
)
logger = logging.getLogger("alembic.runtime.migration")


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)[:255]


def upgrade():
    conn = op.get_bind()
    changed: list[dict] = []
    rows = conn.execute(  # streamed: a million profiles are not held at once
        sa.select(_profile.c.user_id, *(_profile.c[k] for k in _KEYS)).execution_options(
            stream_results=True, yield_per=10_000
        )
    )
    for row in rows:
        values = {k: _nfc(row._mapping[k]) for k in _KEYS if not row._mapping[k].isascii()}
        values = {k: v for k, v in values.items() if v != row._mapping[k]}
        if values:
            changed.append({"user_id": row.user_id, "old": row.username_key, **values})
    taken = set()
    for change in changed:
        new = change.get("username_key")
        if new is not None:
            holder = conn.execute(
                sa.select(_profile.c.user_id).where(_profile.c.username_key == new)
            ).scalar()
            if holder is not None or new in taken:
                logger.warning(
                    "The usernames '%s' (profile %s) and '%s' differ only in how an accent is "
                    "encoded; its key is left as it was. Delete or rename one of the two.",
                    change["old"],
                    change["user_id"],
                    new,
                )
                del change["username_key"]
            else:
                taken.add(new)
        values = {k: change[k] for k in _KEYS if k in change}
        if values:
            conn.execute(
                sa.update(_profile).where(_profile.c.user_id == change["user_id"]).values(**values)
            )


def downgrade():
    pass  # keys in normal form C are valid keys for the older code too

"""Alembic environment for the extension's own tables (run through intranet_licenses.schema)."""

from alembic import context

from intranet_licenses.models import metadata
from intranet_licenses.schema import VERSION_TABLE


def _ours(name, type_, parent_names):
    return type_ != "table" or name.startswith("licenses_")


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    include_name=_ours,
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()

"""The booking invariant on PostgreSQL: no accelerator allocated twice for overlapping time.

An exclusion constraint is PostgreSQL's; Django's ExclusionConstraint in Meta would break the
SQLite quickstart, so it is added here, on PostgreSQL only. On SQLite, the booking service runs
in BEGIN IMMEDIATE transactions instead (docs/architecture.md, "The booking invariant").
"""

from django.contrib.postgres.operations import BtreeGistExtension
from django.db import migrations

CONSTRAINT = "allocation_no_overlap"


def add_exclusion(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        f"ALTER TABLE booking_allocation ADD CONSTRAINT {CONSTRAINT} EXCLUDE USING gist "
        "(accelerator_id WITH =, tstzrange(start, \"end\", '[)') WITH &&) WHERE (active)"
    )


def drop_exclusion(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE booking_allocation DROP CONSTRAINT {CONSTRAINT}")


class Migration(migrations.Migration):
    dependencies = [("booking", "0001_initial")]

    operations = [
        BtreeGistExtension(),
        migrations.RunPython(add_exclusion, drop_exclusion),
    ]

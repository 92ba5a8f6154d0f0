"""Host.drain_cause: why a host is drained, as data, so that no code reads the reason's words.

Hosts drained before it get their cause from the reason, parsed once here, so that they behave
as before: only one drained for being unreachable alone returns by itself when it answers.
"""

import re

from django.db import migrations, models

# What portal/operations/health.py wrote until now, for each kind of problem.
UNREACHABLE_ONLY = re.compile(
    r"Unreachable: no answer since (it was added on )?\d{4}-\d\d-\d\d \d\d:\d\d UTC"
)
BY_WORDS = [
    ("too_hot", re.compile(r"°C, above the host's limit of")),
    ("agent_error", re.compile(r"The \S+ probe failed: |Reading the devices failed: ")),
    ("devices", re.compile(r"The host reports \d+ |is in the inventory but sent no reading")),
    ("health_check", re.compile(r"The health check of \S+ #\d+ failed")),
]


def cause_of(reason: str) -> str:
    if UNREACHABLE_ONLY.fullmatch(reason):
        return "unreachable"
    found = [(m.start(), cause) for cause, words in BY_WORDS if (m := words.search(reason))]
    return min(found)[1] if found else "staff"  # the first problem named, or a person's words


def derive_causes(apps, schema_editor):
    Host = apps.get_model("inventory", "Host")
    for host in Host.objects.filter(drained_at__isnull=False).only("pk", "drain_reason"):
        Host.objects.filter(pk=host.pk).update(drain_cause=cause_of(host.drain_reason))


class Migration(migrations.Migration):
    dependencies = [
        ("inventory", "0005_device_identity_and_map"),
    ]

    operations = [
        migrations.AddField(
            model_name="host",
            name="drain_cause",
            field=models.CharField(
                blank=True,
                choices=[
                    ("unreachable", "unreachable"),
                    ("agent_error", "probe or agent error"),
                    ("devices", "devices missing or miscounted"),
                    ("too_hot", "too hot"),
                    ("health_check", "health check failed"),
                    ("staff", "drained by staff"),
                    ("other", "other problem"),
                ],
                max_length=16,
            ),
        ),
        migrations.RunPython(derive_causes, migrations.RunPython.noop),
    ]

"""The other half of inventory 0007: the models leave operations' state; their tables stay."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('inventory', '0007_telemetry_records'),
        ('operations', '0002_healthcheck'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(
                    model_name='healthcheck',
                    name='accelerator',
                ),
                migrations.RemoveField(
                    model_name='healthcheck',
                    name='host',
                ),
                migrations.RemoveField(
                    model_name='healthcheck',
                    name='stack',
                ),
                migrations.RemoveField(
                    model_name='squatter',
                    name='accelerator',
                ),
                migrations.RemoveField(
                    model_name='squatter',
                    name='host',
                ),
                migrations.DeleteModel(
                    name='DeviceSample',
                ),
                migrations.DeleteModel(
                    name='HealthCheck',
                ),
                migrations.DeleteModel(
                    name='Squatter',
                ),
            ],
            database_operations=[],
        ),
    ]

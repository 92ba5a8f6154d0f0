"""DeviceSample, Squatter and HealthCheck move from operations to inventory (docs/decisions.md,
"App layers"): in the state only; the tables keep their names (Meta.db_table), no row moves."""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('operations', '0002_healthcheck'),
        ('inventory', '0006_host_drain_cause'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='HealthCheck',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('started', models.DateTimeField()),
                        ('finished', models.DateTimeField(blank=True, null=True)),
                        ('passed', models.BooleanField(null=True)),
                        ('exit_status', models.IntegerField(null=True)),
                        ('output', models.TextField(blank=True)),
                        ('accelerator', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='health_checks', to='inventory.accelerator')),
                        ('host', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='health_checks', to='inventory.host')),
                        ('stack', models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='inventory.driverstack')),
                    ],
                    options={
                        'db_table': 'operations_healthcheck',
                        'ordering': ['-started'],
                    },
                ),
                migrations.CreateModel(
                    name='DeviceSample',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('at', models.DateTimeField()),
                        ('resolution', models.PositiveIntegerField(choices=[(0, 'reading'), (3600, 'hour')], default=0)),
                        ('readings', models.PositiveIntegerField(default=1)),
                        ('utilization_pct', models.FloatField(null=True)),
                        ('utilization_max_pct', models.FloatField(null=True)),
                        ('memory_used_mib', models.PositiveIntegerField(null=True)),
                        ('temperature_c', models.FloatField(null=True)),
                        ('power_w', models.FloatField(null=True)),
                        ('accelerator', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='samples', to='inventory.accelerator')),
                    ],
                    options={
                        'db_table': 'operations_devicesample',
                        'ordering': ['accelerator', 'at'],
                        'indexes': [models.Index(fields=['resolution', 'at'], name='sample_retention_idx')],
                        'constraints': [models.UniqueConstraint(fields=('accelerator', 'resolution', 'at'), name='one_sample_per_time')],
                    },
                ),
                migrations.CreateModel(
                    name='Squatter',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('pid', models.PositiveIntegerField()),
                        ('unix_user', models.CharField(max_length=64)),
                        ('holder', models.CharField(blank=True, max_length=64)),
                        ('first_seen', models.DateTimeField(default=django.utils.timezone.now)),
                        ('last_seen', models.DateTimeField(default=django.utils.timezone.now)),
                        ('killed_at', models.DateTimeField(blank=True, null=True)),
                        ('kill_error', models.TextField(blank=True)),
                        ('gone_at', models.DateTimeField(blank=True, null=True)),
                        ('accelerator', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='inventory.accelerator')),
                        ('host', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='squatters', to='inventory.host')),
                    ],
                    options={
                        'db_table': 'operations_squatter',
                        'ordering': ['-first_seen'],
                        'constraints': [models.UniqueConstraint(condition=models.Q(('gone_at__isnull', True)), fields=('host', 'accelerator', 'pid', 'unix_user'), name='one_open_squatter')],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]

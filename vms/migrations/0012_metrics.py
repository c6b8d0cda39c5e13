"""Metrics for the graphs (issue 13, point 8): the sample tables, the last counters, and the sampling schedule (every minute)."""

import django.db.models.deletion
from django.db import migrations, models

SCHEDULE = "vapor: sample VM and host metrics"


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name=SCHEDULE, defaults={"func": "vms.tasks.sample_metrics", "schedule_type": "I", "minutes": 1, "repeats": -1}
    )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=SCHEDULE).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("vms", "0011_consoles"),
        ("django_q", "0018_task_success_index"),
    ]

    operations = [
        migrations.CreateModel(
            name="MetricCounters",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("scope", models.CharField(max_length=16, unique=True)),
                ("at", models.DateTimeField()),
                ("counters", models.JSONField(default=dict)),
            ],
        ),
        migrations.CreateModel(
            name="HostMetricSample",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("at", models.DateTimeField()),
                (
                    "resolution",
                    models.PositiveSmallIntegerField(
                        help_text="Seconds the row covers: 60 (a minute's sample) or 600 (ten minutes averaged)."
                    ),
                ),
                ("cpu_percent", models.FloatField(help_text="Of the VM's vCPUs (of the host's CPUs for the host).")),
                ("memory_mib", models.FloatField(help_text="Used, in MiB.")),
                ("disk_read_bps", models.FloatField(help_text="Bytes per second.")),
                ("disk_write_bps", models.FloatField()),
                ("net_rx_bps", models.FloatField()),
                ("net_tx_bps", models.FloatField()),
                ("memory_total_mib", models.FloatField()),
            ],
            options={
                "indexes": [models.Index(fields=["resolution", "at"], name="vms_metric_host_res_at")],
            },
        ),
        migrations.CreateModel(
            name="VmMetricSample",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("at", models.DateTimeField()),
                (
                    "resolution",
                    models.PositiveSmallIntegerField(
                        help_text="Seconds the row covers: 60 (a minute's sample) or 600 (ten minutes averaged)."
                    ),
                ),
                ("cpu_percent", models.FloatField(help_text="Of the VM's vCPUs (of the host's CPUs for the host).")),
                ("memory_mib", models.FloatField(help_text="Used, in MiB.")),
                ("disk_read_bps", models.FloatField(help_text="Bytes per second.")),
                ("disk_write_bps", models.FloatField()),
                ("net_rx_bps", models.FloatField()),
                ("net_tx_bps", models.FloatField()),
                (
                    "vm",
                    models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="metric_samples", to="vms.virtualmachine"),
                ),
            ],
            options={
                "indexes": [models.Index(fields=["vm", "resolution", "at"], name="vms_metric_vm_res_at")],
            },
        ),
        migrations.RunPython(create_schedule, remove_schedule),
    ]

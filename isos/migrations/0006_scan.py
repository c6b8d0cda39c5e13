"""The ISO directories watched (issue 13, point 5): the mtime a scan compares, and the scan every 5 minutes in django-q2."""

from django.db import migrations, models

NAME = "vapor: scan the ISO directories"


def create(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name=NAME, defaults={"func": "isos.tasks.scan_iso_dirs", "schedule_type": "I", "minutes": 5, "repeats": -1}
    )


def remove(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("isos", "0005_delivery_attempts"),
        ("django_q", "0018_task_success_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="isoimage",
            name="file_mtime_ns",
            field=models.BigIntegerField(
                blank=True,
                help_text="The file's mtime when it was last hashed, in ns since the epoch.",
                null=True,
                verbose_name="file modified (ns)",
            ),
        ),
        migrations.RunPython(create, remove),
    ]

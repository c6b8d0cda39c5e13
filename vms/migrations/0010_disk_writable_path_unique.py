# One writer per disk file: a partial unique constraint on Disk.path (issue 11).

from django.db import migrations, models


def refuse_shared_writers(apps, schema_editor):
    """Before the constraint: name the VMs that already share a writable file, so the
    operator can delete one of them, instead of failing on the database's message."""
    Disk = apps.get_model("vms", "Disk")
    holders = {}
    for path, name in Disk.objects.filter(readonly=False).exclude(path="").values_list("path", "vm__name"):
        holders.setdefault(path, []).append(name)
    shared = {path: names for path, names in holders.items() if len(names) > 1}
    if shared:
        lines = "; ".join(f"{path}: {', '.join(sorted(names))}" for path, names in sorted(shared.items()))
        raise RuntimeError(f"these files are writable disks of more than one VM; delete all but one VM of each first: {lines}")


class Migration(migrations.Migration):

    dependencies = [
        ('vms', '0009_projects'),
    ]

    operations = [
        migrations.RunPython(refuse_shared_writers, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name='disk',
            constraint=models.UniqueConstraint(condition=models.Q(('readonly', False), models.Q(('path', ''), _negated=True)), fields=('path',), name='disk_writable_path_unique'),
        ),
    ]

"""Every VM and template belongs to a project: existing ones go to `default`; events name who asked."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

import projects.models


def _into_default(apps, schema_editor):
    Project = apps.get_model("projects", "Project")
    default, _ = Project.objects.get_or_create(name="default", defaults={"description": "Everything not put elsewhere."})
    for label in ("VirtualMachine", "VmTemplate"):
        apps.get_model("vms", label).objects.filter(project__isnull=True).update(project=default)
    # What existing VMs count against the quota: the sizes Vapor knows of their volumes.
    VirtualMachine = apps.get_model("vms", "VirtualMachine")
    Disk = apps.get_model("vms", "Disk")
    for vm in VirtualMachine.objects.all():
        sizes = Disk.objects.filter(vm=vm, created_by_vapor=True).values_list("size_gb", flat=True)
        VirtualMachine.objects.filter(pk=vm.pk).update(disk_gb=sum(size or 0 for size in sizes))


class Migration(migrations.Migration):
    dependencies = [
        ("projects", "0001_projects_and_audit"),
        ("vms", "0008_disk_source_chain"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="virtualmachine",
            name="project",
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name="vms", to="projects.project"),
        ),
        migrations.AddField(
            model_name="vmtemplate",
            name="project",
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name="templates", to="projects.project"),
        ),
        migrations.AddField(
            model_name="virtualmachine",
            name="disk_gb",
            field=models.PositiveBigIntegerField(
                default=0,
                help_text="GB of the volumes Vapor makes for it (new disks and clones), as counted against its project's quota.",
                verbose_name="disk (GB)",
            ),
        ),
        migrations.AddField(
            model_name="vmevent",
            name="user",
            field=models.ForeignKey(
                blank=True, help_text="Who asked for it.", null=True, on_delete=django.db.models.deletion.SET_NULL,
                related_name="+", to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="vmevent",
            name="source_address",
            field=models.GenericIPAddressField(blank=True, help_text="Where the request came from.", null=True),
        ),
        migrations.RunPython(_into_default, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="virtualmachine",
            name="project",
            field=models.ForeignKey(
                default=projects.models.default_project_pk, on_delete=django.db.models.deletion.PROTECT, related_name="vms",
                to="projects.project",
            ),
        ),
        migrations.AlterField(
            model_name="vmtemplate",
            name="project",
            field=models.ForeignKey(
                default=projects.models.default_project_pk, on_delete=django.db.models.deletion.PROTECT, related_name="templates",
                to="projects.project",
            ),
        ),
    ]

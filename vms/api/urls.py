"""Mounted under /api/v1/virtualmachines/."""

from django.urls import path

from vms.api import console_views, template_views, views

# day two: imports of addresses
# day two: imports of hardware
from vms.api import hardware_views  # isort: skip

# day two: imports of disks
from vms.api import device_views  # isort: skip

# day two: imports of snapshots
from vms.api.snapshot_views import VmSnapshotCollectionView, VmSnapshotItemView, VmSnapshotRevertView

# day two: imports of cloud_init

# several hosts: live migration
from vms.api import migration_views  # isort: skip


urlpatterns = [
    path("", views.VmCollectionView.as_view(), name="vm-list"),
    path("templates", template_views.TemplateCollectionView.as_view(), name="vm-template-list"),
    path("templates/<str:name>", template_views.TemplateItemView.as_view(), name="vm-template-detail"),
    path("create-enhanced", views.VmCreateEnhancedView.as_view(), name="vm-create-enhanced"),
    path("<int:vm_id>", views.VmItemView.as_view(), name="vm-detail"),
    path("<int:vm_id>/console", console_views.VmConsoleView.as_view(), name="vm-console"),
    # day two: addresses
    # day two: hardware
    path("<int:vm_id>/nics", hardware_views.VmNicCollectionView.as_view(), name="vm-nics"),
    path("<int:vm_id>/nics/<str:mac>", hardware_views.VmNicItemView.as_view(), name="vm-nic"),
    # day two: disks
    path("<int:vm_id>/disks", device_views.VmDiskCollectionView.as_view(), name="vm-disk-list"),
    path("<int:vm_id>/disks/<str:target_dev>", device_views.VmDiskItemView.as_view(), name="vm-disk-detail"),
    path("<int:vm_id>/cdroms", device_views.VmCdromCollectionView.as_view(), name="vm-cdrom-list"),
    path("<int:vm_id>/cdroms/<str:target_dev>", device_views.VmCdromItemView.as_view(), name="vm-cdrom-detail"),
    # day two: snapshots
    path("<int:vm_id>/snapshots", VmSnapshotCollectionView.as_view(), name="vm-snapshots"),
    path("<int:vm_id>/snapshots/<str:name>", VmSnapshotItemView.as_view(), name="vm-snapshot"),
    path("<int:vm_id>/snapshots/<str:name>/revert", VmSnapshotRevertView.as_view(), name="vm-snapshot-revert"),
    # day two: cloud_init
    # several hosts: live migration
    path("<int:vm_id>/migrate", migration_views.VmMigrateView.as_view(), name="vm-migrate"),
    path("<int:vm_id>/migrations", migration_views.VmMigrationCollectionView.as_view(), name="vm-migrations"),
    path("<int:vm_id>/migrations/<int:migration_id>", migration_views.VmMigrationItemView.as_view(), name="vm-migration"),
    path("<int:vm_id>/migrations/<int:migration_id>/cancel", migration_views.VmMigrationCancelView.as_view(), name="vm-migration-cancel"),
    *[path(f"<int:vm_id>/{action}", view.as_view(), name=f"vm-{action}") for action, view in views.ACTION_VIEWS.items()],
]

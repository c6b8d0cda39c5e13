"""`/api/v1/virtualmachines/{id}/migrate` and `.../migrations[/{mid}[/cancel]]`: live migration (issue 15 point 6).
Thin: parse, call `vms.services.migration`, render."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from projects.access import actor_from_request
from projects.choices import Via
from vaporsite.api import ErrorSerializer, StrictSerializer
from vms.migration_models import VmMigration
from vms.models import VirtualMachine
from vms.selectors import vm_list
from vms.services import migration as services

ERRORS = {code: ErrorSerializer for code in (400, 403, 404, 409, 500, 503)}
RULES = (
    " The VM must be running (409 `vm_not_running`). `host`: a host's name (404 `host_not_found`; 400 `same_host` for its own "
    "host; 409 `host_unavailable` when disabled, in maintenance or down; 409 `host_full` past its memory or vCPU budget). "
    "Also 409 `migration_in_progress`, `has_snapshots` (delete them first), "
    "`readonly_media` (ISOs or the cloud-init seed the destination lacks at the same path: eject them first), "
    "`destination_storage` (no pool for the disks' directory there, a file in the way, not shared when copy_storage "
    "is false, or the VM's UEFI variables file or TPM state already there), `disk_in_use` (a disk backs linked clones). "
    "UEFI (Secure Boot too) and TPM VMs move with their variables and TPM state. The VM's `host` changes only once the "
    "migration succeeded; "
    "a failed or cancelled one leaves it running on the source."
)


class MigrateRequestSerializer(StrictSerializer):
    host = serializers.CharField(max_length=63, help_text="The destination host's name.")
    copy_storage = serializers.BooleanField(
        default=True, help_text="Copy the writable disks to the destination (true), or rely on storage both hosts share (false)."
    )


class MigrationProgressSerializer(serializers.Serializer):
    processed_bytes = serializers.IntegerField()
    total_bytes = serializers.IntegerField(help_text="What libvirt expects to move; it may grow while the guest runs.")
    percent = serializers.FloatField(allow_null=True, help_text="processed / total; null before libvirt reported anything.")


class MigrationSerializer(serializers.ModelSerializer):
    vm = serializers.IntegerField(source="vm_id")
    source = serializers.CharField(source="source.name", help_text="The host it ran on.")  # type: ignore[assignment]
    destination = serializers.CharField(source="destination.name")
    status = serializers.ChoiceField(choices=["queued", "running", "succeeded", "failed", "cancelled"])
    progress = serializers.SerializerMethodField()
    cancel_requested = serializers.BooleanField()

    class Meta:
        model = VmMigration
        fields = [
            "id",
            "vm",
            "source",
            "destination",
            "copy_storage",
            "status",
            "progress",
            "cancel_requested",
            "error",
            "created_at",
            "started_at",
            "finished_at",
        ]

    @extend_schema_field(MigrationProgressSerializer)
    def get_progress(self, migration: VmMigration) -> dict[str, object]:
        return {"processed_bytes": migration.processed_bytes, "total_bytes": migration.total_bytes, "percent": migration.percent}


def _vm(request: Request, vm_id: int) -> VirtualMachine:
    return get_object_or_404(vm_list(request.user).select_related("host"), pk=vm_id)


def _location(request: Request, migration: VmMigration) -> str:
    return request.build_absolute_uri(reverse("vm-migration", args=[migration.vm_id, migration.pk]))


class VmMigrateView(APIView):
    queryset = VirtualMachine.objects.all()
    required_perms = {"POST": ["change"]}

    @extend_schema(
        operation_id="vms_migrate",
        request=MigrateRequestSerializer,
        responses={202: MigrationSerializer, **ERRORS},
        description="Live-migrate the running VM to another host (libvirt peer to peer); 202 with the queued migration, "
        "its address in Location." + RULES,
    )
    def post(self, request: Request, vm_id: int) -> Response:
        vm = _vm(request, vm_id)
        body = MigrateRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        asked = body.validated_data
        migration = services.vm_migrate(
            vm=vm, host=asked["host"], copy_storage=asked["copy_storage"], actor=actor_from_request(request, Via.API)
        )
        migration = services.vm_migration_get(vm=vm, migration_id=migration.pk)
        return Response(
            MigrationSerializer(migration).data, status=status.HTTP_202_ACCEPTED, headers={"Location": _location(request, migration)}
        )


class VmMigrationCollectionView(APIView):
    queryset = VirtualMachine.objects.all()
    required_perms = {"GET": ["view"]}

    @extend_schema(operation_id="vms_migrations_list", responses={200: MigrationSerializer(many=True), 404: ErrorSerializer})
    def get(self, request: Request, vm_id: int) -> Response:
        return Response(MigrationSerializer(services.vm_migration_list(vm=_vm(request, vm_id)), many=True).data)


class VmMigrationItemView(APIView):
    queryset = VirtualMachine.objects.all()
    required_perms = {"GET": ["view"]}

    @extend_schema(operation_id="vms_migrations_retrieve", responses={200: MigrationSerializer, 404: ErrorSerializer})
    def get(self, request: Request, vm_id: int, migration_id: int) -> Response:
        return Response(MigrationSerializer(services.vm_migration_get(vm=_vm(request, vm_id), migration_id=migration_id)).data)


class VmMigrationCancelView(APIView):
    queryset = VirtualMachine.objects.all()
    required_perms = {"POST": ["change"]}

    @extend_schema(
        operation_id="vms_migrations_cancel",
        request=None,
        responses={202: MigrationSerializer, **ERRORS},
        description="Stop a queued or running migration (202): a queued one is cancelled at once, a running one is aborted "
        "by its worker within about a second and ends `cancelled` (or `succeeded`, when it completed first). "
        "409 `migration_finished` once it has ended.",
    )
    def post(self, request: Request, vm_id: int, migration_id: int) -> Response:
        migration = services.vm_migration_get(vm=_vm(request, vm_id), migration_id=migration_id)
        migration = services.vm_migration_cancel(migration=migration, actor=actor_from_request(request, Via.API))
        return Response(
            MigrationSerializer(migration).data, status=status.HTTP_202_ACCEPTED, headers={"Location": _location(request, migration)}
        )

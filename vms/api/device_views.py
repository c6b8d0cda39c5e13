"""Disks and CD-ROM drives of a VM: /api/v1/virtualmachines/{id}/disks and /cdroms. Thin: parse, call a service, render.

Every change needs the `change` permission on VMs (and the operator role in the VM's project, checked by the services).
"""

from __future__ import annotations

from contextlib import closing
from typing import Any

from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from projects.access import actor_from_request
from projects.choices import Via
from vaporsite.api import ErrorSerializer, StrictSerializer
from vms import hypervisor
from vms.api.serializers import DiskInSerializer, DiskOutSerializer
from vms.models import Disk, VirtualMachine
from vms.selectors import vm_list
from vms.services import cdroms, devices
from vms.services.cdroms import CdromDrive
from vms.services.requests import DiskRequest

ERRORS = {400: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer, 500: ErrorSerializer, 503: ErrorSerializer}
CHANGE = ["change"]
TRUE = {"1", "true", "yes"}


class DiskDeviceSerializer(DiskOutSerializer):
    size_gb = serializers.IntegerField(allow_null=True, help_text="GB: the size Vapor gave or grew it to (null: an existing file's own).")

    class Meta(DiskOutSerializer.Meta):
        fields = [*DiskOutSerializer.Meta.fields, "size_gb", "volume_name", "created_by_vapor"]


class DiskGrowSerializer(StrictSerializer):
    size_gb = serializers.IntegerField(min_value=1, help_text="The new size in GB: larger than the disk (disks only grow).")


class CdromInSerializer(StrictSerializer):
    iso = serializers.CharField(
        allow_null=True, max_length=4096, help_text="An ISO of the library by id, name, absolute path or file name; null: empty (eject)."
    )


class CdromIsoSerializer(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    path = serializers.CharField()


class CdromDriveSerializer(serializers.Serializer):
    target_dev = serializers.CharField()
    bus = serializers.CharField()
    boot_order = serializers.IntegerField(allow_null=True)
    empty = serializers.BooleanField()
    iso = CdromIsoSerializer(allow_null=True, help_text="The library ISO in the drive; null when empty.")
    path = serializers.CharField(help_text='The file the domain names ("" when empty).')
    slot = serializers.CharField(allow_null=True, help_text="primary or secondary for a library ISO; null when empty.")
    reference = serializers.CharField(allow_null=True, help_text="The reference the ISO was given by.")


def _drive(drive: CdromDrive) -> dict[str, Any]:
    iso, row = drive.iso, drive.attachment
    return {
        "target_dev": drive.target_dev,
        "bus": drive.bus,
        "boot_order": drive.boot_order,
        "empty": not drive.path,
        "iso": {"id": iso.pk, "name": iso.name, "path": iso.path} if iso else None,
        "path": drive.path,
        "slot": row.slot if row else None,
        "reference": row.reference if row else None,
    }


def _vm(request: Request, vm_id: int) -> VirtualMachine:
    return get_object_or_404(vm_list(request.user), pk=vm_id)


def _disk_request(body: DiskInSerializer) -> DiskRequest:
    body.is_valid(raise_exception=True)
    return DiskRequest(**body.validated_data)


class VmDiskCollectionView(APIView):
    queryset = VirtualMachine.objects.all()
    required_perms = {"POST": CHANGE}

    @extend_schema(operation_id="vms_disks_list", responses={200: DiskDeviceSerializer(many=True), 404: ErrorSerializer})
    def get(self, request: Request, vm_id: int) -> Response:
        vm = _vm(request, vm_id)
        return Response(DiskDeviceSerializer(devices.disk_list(vm=vm), many=True).data)

    @extend_schema(
        operation_id="vms_disks_attach",
        request=DiskInSerializer,
        responses={201: DiskDeviceSerializer, **ERRORS},
        description=(
            "Attach one disk, given as one entry of create-enhanced's `disks` (size: a new volume; path: an existing file; "
            "clone_from: a clone), checked by creation's rules. Live and persistent on a running VM for virtio and scsi; "
            "409 `not_hotpluggable` for sata/ide while it runs. A failed attach removes the volume it created."
        ),
    )
    def post(self, request: Request, vm_id: int) -> Response:
        vm = _vm(request, vm_id)
        asked = _disk_request(DiskInSerializer(data=request.data))
        with closing(hypervisor.get_hypervisor(vm.host.libvirt_uri)) as hv:
            disk = devices.disk_attach(vm=vm, request=asked, hv=hv, actor=actor_from_request(request, Via.API))
        location = request.build_absolute_uri(reverse("vm-disk-detail", args=[vm.pk, disk.target_dev]))
        return Response(DiskDeviceSerializer(disk).data, status=status.HTTP_201_CREATED, headers={"Location": location})


class VmDiskItemView(APIView):
    queryset = VirtualMachine.objects.all()
    required_perms = {"PATCH": CHANGE, "DELETE": CHANGE}

    @extend_schema(operation_id="vms_disks_retrieve", responses={200: DiskDeviceSerializer, 404: ErrorSerializer})
    def get(self, request: Request, vm_id: int, target_dev: str) -> Response:
        disk: Disk = devices.disk_get(vm=_vm(request, vm_id), target_dev=target_dev)
        return Response(DiskDeviceSerializer(disk).data)

    @extend_schema(
        operation_id="vms_disks_grow",
        request=DiskGrowSerializer,
        responses={200: DiskDeviceSerializer, **ERRORS},
        description="Grow the disk to `size_gb` (blockResize while running, a volume resize while stopped); smaller: 400 on size_gb.",
    )
    def patch(self, request: Request, vm_id: int, target_dev: str) -> Response:
        vm = _vm(request, vm_id)
        body = DiskGrowSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with closing(hypervisor.get_hypervisor(vm.host.libvirt_uri)) as hv:
            disk = devices.disk_grow(
                vm=vm, target_dev=target_dev, size_gb=body.validated_data["size_gb"], hv=hv, actor=actor_from_request(request, Via.API)
            )
        return Response(DiskDeviceSerializer(disk).data)

    @extend_schema(
        operation_id="vms_disks_detach",
        parameters=[OpenApiParameter("delete_volume", bool, description="Also delete the volume, if Vapor created it for this VM.")],
        responses={204: None, **ERRORS},
        description="Detach the disk (live on virtio/scsi while running). 409 `has_snapshots` while the VM has snapshots.",
    )
    def delete(self, request: Request, vm_id: int, target_dev: str) -> Response:
        vm = _vm(request, vm_id)
        delete_volume = request.query_params.get("delete_volume", "").lower() in TRUE
        with closing(hypervisor.get_hypervisor(vm.host.libvirt_uri)) as hv:
            devices.disk_detach(
                vm=vm, target_dev=target_dev, delete_volume=delete_volume, hv=hv, actor=actor_from_request(request, Via.API)
            )
        return Response(status=status.HTTP_204_NO_CONTENT)


class VmCdromCollectionView(APIView):
    queryset = VirtualMachine.objects.all()
    required_perms = {"POST": CHANGE}

    @extend_schema(
        operation_id="vms_cdroms_list", responses={200: CdromDriveSerializer(many=True), 404: ErrorSerializer, 503: ErrorSerializer}
    )
    def get(self, request: Request, vm_id: int) -> Response:
        vm = _vm(request, vm_id)
        with closing(hypervisor.get_hypervisor(vm.host.libvirt_uri)) as hv:
            drives = cdroms.cdrom_list(vm=vm, hv=hv)
        return Response([_drive(d) for d in drives])

    @extend_schema(
        operation_id="vms_cdroms_add",
        request=CdromInSerializer,
        responses={201: CdromDriveSerializer, **ERRORS},
        description="Add a SATA CD-ROM drive, empty (iso null) or holding an ISO; the VM must be stopped (409 `not_hotpluggable`).",
    )
    def post(self, request: Request, vm_id: int) -> Response:
        vm = _vm(request, vm_id)
        body = CdromInSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with closing(hypervisor.get_hypervisor(vm.host.libvirt_uri)) as hv:
            drive = cdroms.cdrom_add(vm=vm, iso=body.validated_data["iso"], hv=hv, actor=actor_from_request(request, Via.API))
        location = request.build_absolute_uri(reverse("vm-cdrom-detail", args=[vm.pk, drive.target_dev]))
        return Response(_drive(drive), status=status.HTTP_201_CREATED, headers={"Location": location})


class VmCdromItemView(APIView):
    queryset = VirtualMachine.objects.all()
    required_perms = {"PUT": CHANGE, "DELETE": CHANGE}

    @extend_schema(operation_id="vms_cdroms_retrieve", responses={200: CdromDriveSerializer, 404: ErrorSerializer, 503: ErrorSerializer})
    def get(self, request: Request, vm_id: int, target_dev: str) -> Response:
        vm = _vm(request, vm_id)
        with closing(hypervisor.get_hypervisor(vm.host.libvirt_uri)) as hv:
            drive = cdroms.cdrom_get(vm=vm, target_dev=target_dev, hv=hv)
        return Response(_drive(drive))

    @extend_schema(
        operation_id="vms_cdroms_change",
        request=CdromInSerializer,
        responses={200: CdromDriveSerializer, **ERRORS},
        description="Insert a library ISO (id, name, path or file name) or eject (null); live and persistent while the VM runs.",
    )
    def put(self, request: Request, vm_id: int, target_dev: str) -> Response:
        vm = _vm(request, vm_id)
        body = CdromInSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with closing(hypervisor.get_hypervisor(vm.host.libvirt_uri)) as hv:
            drive = cdroms.cdrom_change(
                vm=vm, target_dev=target_dev, iso=body.validated_data["iso"], hv=hv, actor=actor_from_request(request, Via.API)
            )
        return Response(_drive(drive))

    @extend_schema(
        operation_id="vms_cdroms_remove",
        responses={204: None, **ERRORS},
        description="Remove the CD-ROM drive; the VM must be stopped (409 `not_hotpluggable`). The ISO stays in the library.",
    )
    def delete(self, request: Request, vm_id: int, target_dev: str) -> Response:
        vm = _vm(request, vm_id)
        with closing(hypervisor.get_hypervisor(vm.host.libvirt_uri)) as hv:
            cdroms.cdrom_remove(vm=vm, target_dev=target_dev, hv=hv, actor=actor_from_request(request, Via.API))
        return Response(status=status.HTTP_204_NO_CONTENT)

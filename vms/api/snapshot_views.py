"""`/api/v1/virtualmachines/{id}/snapshots[/{name}[/revert]]`: a VM's snapshots. Thin: parse, call a service, render."""

from __future__ import annotations

from contextlib import closing

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from projects.access import actor_from_request
from projects.choices import Via
from vaporsite.api import ErrorSerializer, StrictSerializer
from vms import hypervisor
from vms.api.serializers import VmSerializer
from vms.models import VirtualMachine, VmSnapshot
from vms.selectors import vm_list
from vms.services import snapshots as services

ERRORS = {code: ErrorSerializer for code in (400, 403, 404, 409, 500, 503)}
RULES = (
    " A shut-off VM (BIOS or UEFI) takes disk-only snapshots (memory=false); a running BIOS VM takes them with its memory "
    "(memory=true). 409 `vm_running`: a running UEFI VM, or a running VM without memory=true; `vm_not_running`: memory=true "
    "on a shut-off VM; `snapshot_exists`; `disk_not_qcow2`; `vm_busy`."
)


class SnapshotRequestSerializer(StrictSerializer):
    name = serializers.CharField(max_length=64, help_text="Unique per VM: letters, digits, '.', '_' and '-'.")
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=services.DESCRIPTION_MAX)
    memory = serializers.BooleanField(default=False, help_text="Save the running guest's memory too (BIOS VMs).")


class SnapshotSerializer(serializers.ModelSerializer):
    state = serializers.CharField(source="vm_state", help_text="The VM's state when the snapshot was taken.")
    disks = serializers.ListField(child=serializers.CharField(), help_text="The target devices of the disks it holds.")
    files = serializers.SerializerMethodField(help_text="Files of its own (a UEFI VM's NVRAM copy), as volumes of the VM's pool.")

    class Meta:
        model = VmSnapshot
        fields = ["name", "description", "kind", "memory", "state", "disks", "files", "created_at"]

    def get_files(self, snapshot: VmSnapshot) -> list[str]:
        return [snapshot.nvram_volume] if snapshot.nvram_volume else []


class RevertSerializer(serializers.Serializer):
    state = serializers.CharField(help_text="The domain's state after the revert.")
    snapshot = SnapshotSerializer()
    vm = VmSerializer()


def _vm(request: Request, vm_id: int) -> VirtualMachine:
    return get_object_or_404(vm_list(request.user), pk=vm_id)


class VmSnapshotCollectionView(APIView):
    queryset = VirtualMachine.objects.all()
    required_perms = {"GET": ["view"], "POST": ["change"]}

    @extend_schema(operation_id="vms_snapshots_list", responses={200: SnapshotSerializer(many=True), 404: ErrorSerializer})
    def get(self, request: Request, vm_id: int) -> Response:
        return Response(SnapshotSerializer(services.vm_snapshot_list(vm=_vm(request, vm_id)), many=True).data)

    @extend_schema(
        operation_id="vms_snapshots_create",
        request=SnapshotRequestSerializer,
        responses={201: SnapshotSerializer, **ERRORS},
        description="Take a snapshot." + RULES,
    )
    def post(self, request: Request, vm_id: int) -> Response:
        vm = _vm(request, vm_id)
        body = SnapshotRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        asked = body.validated_data
        with closing(hypervisor.get_hypervisor(vm.host.libvirt_uri)) as hv:
            snapshot = services.vm_snapshot_create(
                vm=vm,
                name=asked["name"],
                description=asked["description"],
                memory=asked["memory"],
                hv=hv,
                actor=actor_from_request(request, Via.API),
            )
        return Response(SnapshotSerializer(snapshot).data, status=status.HTTP_201_CREATED)


class VmSnapshotItemView(APIView):
    queryset = VirtualMachine.objects.all()
    required_perms = {"GET": ["view"], "DELETE": ["change"]}

    @extend_schema(operation_id="vms_snapshots_retrieve", responses={200: SnapshotSerializer, 404: ErrorSerializer})
    def get(self, request: Request, vm_id: int, name: str) -> Response:
        return Response(SnapshotSerializer(services.vm_snapshot_get(vm=_vm(request, vm_id), name=name)).data)

    @extend_schema(operation_id="vms_snapshots_destroy", responses={204: None, **ERRORS})
    def delete(self, request: Request, vm_id: int, name: str) -> Response:
        vm = _vm(request, vm_id)
        with closing(hypervisor.get_hypervisor(vm.host.libvirt_uri)) as hv:
            services.vm_snapshot_delete(vm=vm, name=name, hv=hv, actor=actor_from_request(request, Via.API))
        return Response(status=status.HTTP_204_NO_CONTENT)


class VmSnapshotRevertView(APIView):
    queryset = VirtualMachine.objects.all()
    required_perms = {"POST": ["change"]}

    @extend_schema(
        operation_id="vms_snapshots_revert",
        request=None,
        responses={200: RevertSerializer, **ERRORS},
        description="Go back to the snapshot: a snapshot with memory leaves the VM running from that moment, a disk-only one "
        "leaves it shut off (a running VM is stopped first). A UEFI VM's variables are restored too.",
    )
    def post(self, request: Request, vm_id: int, name: str) -> Response:
        vm = _vm(request, vm_id)
        with closing(hypervisor.get_hypervisor(vm.host.libvirt_uri)) as hv:
            done = services.vm_snapshot_revert(vm=vm, name=name, hv=hv, actor=actor_from_request(request, Via.API))
        vm = vm_list(request.user).get(pk=done.vm.pk)
        return Response(RevertSerializer({"state": done.state, "snapshot": done.snapshot, "vm": vm}).data)

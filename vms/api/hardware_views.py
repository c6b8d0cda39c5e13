"""Changing a VM's hardware: PATCH /api/v1/virtualmachines/{id} and its NICs. Thin: shape, one service, render."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from projects.access import actor_from_request
from projects.choices import Via
from vaporsite.api import ErrorSerializer, StrictSerializer
from vms.api.serializers import NicInSerializer, NicOutSerializer, VmSerializer
from vms.models import VirtualMachine
from vms.selectors import vm_list
from vms.services import hardware as services
from vms.services.hardware import Applied, HardwareChange
from vms.services.requests import NicRequest

ERRORS = {400: ErrorSerializer, 403: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer, 503: ErrorSerializer}


class HardwarePatchSerializer(StrictSerializer):
    memory = serializers.IntegerField(required=False, help_text="MB. Live too on a running VM, up to max_memory.")
    max_memory = serializers.IntegerField(required=False, help_text="MB; only while the VM is stopped (409 vm_running otherwise).")
    vcpus = serializers.IntegerField(required=False, help_text="Live too on a running VM, up to max_vcpus.")
    max_vcpus = serializers.IntegerField(required=False, help_text="Only while the VM is stopped (409 vm_running otherwise).")
    boot_order = serializers.ListField(
        child=serializers.CharField(max_length=32),
        required=False,
        max_length=300,
        help_text='Boot devices in order: "hd", "cdrom", "network" (the first of each) or device targets (vda, sda) and NIC MACs. '
        "Takes effect at the next boot.",
    )
    autostart = serializers.BooleanField(required=False)

    def to_change(self) -> HardwareChange:
        data = self.validated_data
        order = data.get("boot_order")
        return HardwareChange(
            memory=data.get("memory"),
            max_memory=data.get("max_memory"),
            vcpus=data.get("vcpus"),
            max_vcpus=data.get("max_vcpus"),
            boot_order=tuple(order) if order is not None else None,
            autostart=data.get("autostart"),
        )


class NicAddSerializer(NicInSerializer):
    mac = serializers.CharField(required=False, max_length=17, help_text="Default: a new one in 52:54:00:xx:xx:xx no Vapor NIC has.")


class AppliedSerializer(serializers.Serializer):
    live = serializers.ListField(child=serializers.CharField(), help_text="Changed in the running domain.")
    persistent = serializers.ListField(child=serializers.CharField(), help_text="Changed in the domain's definition (next boot).")


class VmChangedSerializer(VmSerializer):
    applied = serializers.SerializerMethodField()
    warnings = serializers.SerializerMethodField()

    class Meta(VmSerializer.Meta):
        fields = [*VmSerializer.Meta.fields, "applied", "warnings"]

    @extend_schema_field(AppliedSerializer)
    def get_applied(self, vm: VirtualMachine) -> dict[str, list[str]]:
        applied: Applied = self.context["applied"]
        return applied.as_dict()

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_warnings(self, vm: VirtualMachine) -> list[str]:
        return list(self.context["applied"].warnings)


def _changed(request: Request, applied: Applied, extra: dict[str, Any] | None = None, code: int = 200) -> Response:
    vm = vm_list(request.user).get(pk=applied.vm.pk)
    body = dict(VmChangedSerializer(vm, context={"applied": applied}).data)
    body.update(extra or {})
    return Response(body, status=code)


@extend_schema(
    operation_id="vms_partial_update",
    request=HardwarePatchSerializer,
    responses={200: VmChangedSerializer, **ERRORS},
    description="Change memory, vCPUs, their maxima, the boot order or autostart. Persistent always; on a running VM memory and "
    "vCPUs change live too, up to the maxima set at creation (409 above_maximum); a maximum changes only while stopped "
    "(409 vm_running). The answer is the VM with `applied` (live, persistent) and `warnings`.",
)
def vm_patch(view: APIView, request: Request, vm_id: int) -> Response:
    vm = get_object_or_404(vm_list(request.user), pk=vm_id)
    shape = HardwarePatchSerializer(data=request.data)
    shape.is_valid(raise_exception=True)
    applied = services.vm_hardware_change(vm=vm, change=shape.to_change(), actor=actor_from_request(request, Via.API))
    return _changed(request, applied)


class VmNicCollectionView(APIView):
    queryset = VirtualMachine.objects.all()
    required_perms = {"POST": ["change"]}  # a NIC is a change of the VM, not a new VM

    @extend_schema(
        operation_id="vms_nics_list",
        responses={200: inline_serializer("VmNicList", {"nics": NicOutSerializer(many=True)}), 404: ErrorSerializer},
    )
    def get(self, request: Request, vm_id: int) -> Response:
        vm = get_object_or_404(vm_list(request.user), pk=vm_id)
        return Response({"nics": NicOutSerializer(vm.nics.all(), many=True).data})

    @extend_schema(
        operation_id="vms_nics_create",
        request=NicAddSerializer,
        responses={201: VmChangedSerializer, **ERRORS},
        description="Add a NIC (a create-enhanced networks entry, and optionally its MAC): live and persistent on a running VM "
        "(virtio, e1000e; else 409 not_hotpluggable), persistent on a stopped one. The answer is the VM with `nic`, `applied`, `warnings`.",
    )
    def post(self, request: Request, vm_id: int) -> Response:
        vm = get_object_or_404(vm_list(request.user), pk=vm_id)
        shape = NicAddSerializer(data=request.data)
        shape.is_valid(raise_exception=True)
        data = dict(shape.validated_data)
        mac = data.pop("mac", None)
        applied = services.vm_nic_add(vm=vm, nic=NicRequest(**data), mac=mac, actor=actor_from_request(request, Via.API))
        return _changed(request, applied, {"nic": NicOutSerializer(applied.nic).data}, code=status.HTTP_201_CREATED)


class VmNicItemView(APIView):
    queryset = VirtualMachine.objects.all()
    required_perms = {"DELETE": ["change"]}

    @extend_schema(operation_id="vms_nics_destroy", request=None, responses={200: VmChangedSerializer, **ERRORS})
    def delete(self, request: Request, vm_id: int, mac: str) -> Response:
        vm = get_object_or_404(vm_list(request.user), pk=vm_id)
        applied = services.vm_nic_remove(vm=vm, mac=mac, actor=actor_from_request(request, Via.API))
        return _changed(request, applied)

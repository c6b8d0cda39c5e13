"""VM endpoints. Thin: parse, call a service, render."""

from __future__ import annotations

from contextlib import closing
from typing import Any

from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from projects.access import actor_from_request, role_of
from projects.choices import RANK, Role, Via
from vaporsite.api import ErrorSerializer
from vaporsite.errors import VaporError
from vaporsite.pagination import PAGE_DESCRIPTION, PAGE_PARAMETERS, page_serializer, paginated
from vms import hypervisor
from vms.api import hardware_views
from vms.api.serializers import (
    DryRunSerializer,
    LegacyVmCreateSerializer,
    VmCreateSerializer,
    VmDetailSerializer,
    VmSerializer,
)
from vms.models import VirtualMachine
from vms.selectors import vm_list
from vms.services import lifecycle as services
from vms.services.lifecycle import DryRun

# 503: libvirt is unreachable (code hypervisor_unavailable); the request can be repeated once it is back.
ERRORS = {400: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer, 500: ErrorSerializer, 503: ErrorSerializer}
DRY_RUN = OpenApiParameter("dry_run", bool, description="Validate and show the plan and domain XML; create nothing.")
PROJECT = OpenApiParameter("project", str, description="Only those of this project (by name).")


def _accepted(request: Request, serializer: VmCreateSerializer | LegacyVmCreateSerializer) -> Response:
    serializer.is_valid(raise_exception=True)
    dry_run = request.query_params.get("dry_run", "").lower() in {"1", "true", "yes"}
    result = services.vm_create(request=serializer.to_request(), dry_run=dry_run, actor=actor_from_request(request, Via.API))
    if isinstance(result, DryRun):
        body = {
            "plan": result.steps,
            "placement": result.placement,
            "domain_xml": result.xml,
            "vm": VmSerializer(result.vm).data,
            "warnings": list(result.warnings),
        }
        return Response(body)
    vm = vm_list(request.user).get(pk=result.pk)
    location = request.build_absolute_uri(reverse("vm-detail", args=[vm.pk]))
    return Response(VmSerializer(vm).data, status=status.HTTP_202_ACCEPTED, headers={"Location": location})


class VmCreateEnhancedView(APIView):
    queryset = VirtualMachine.objects.all()

    @extend_schema(
        operation_id="vms_create_enhanced",
        request=VmCreateSerializer,
        parameters=[DRY_RUN],
        responses={202: VmSerializer, 200: DryRunSerializer, **ERRORS},
        description="Create a VM with several disks, ISOs, firmware options, NICs and graphics. Provisioning runs in the background.",
    )
    def post(self, request: Request) -> Response:
        return _accepted(request, VmCreateSerializer(data=request.data))


class VmCollectionView(APIView):
    queryset = VirtualMachine.objects.all()

    @extend_schema(
        operation_id="vms_list",
        parameters=[*PAGE_PARAMETERS, PROJECT],
        responses={200: page_serializer("VmPage", "virtualmachines", VmSerializer(many=True)), 400: ErrorSerializer},
        description=PAGE_DESCRIPTION + " Only the VMs of your projects (every VM for superusers).",
    )
    def get(self, request: Request) -> Response:
        vms = vm_list(request.user, project=request.query_params.get("project"))
        return paginated(request, vms, "virtualmachines", lambda page: VmSerializer(page, many=True).data)

    @extend_schema(
        operation_id="vms_create_legacy",
        request=LegacyVmCreateSerializer,
        parameters=[DRY_RUN],
        responses={202: VmSerializer, 200: DryRunSerializer, **ERRORS},
        description="The basic creation request (single disk_size or disk_path). Prefer create-enhanced.",
    )
    def post(self, request: Request) -> Response:
        return _accepted(request, LegacyVmCreateSerializer(data=request.data))


class VmItemView(APIView):
    queryset = VirtualMachine.objects.all()

    @extend_schema(operation_id="vms_retrieve", responses={200: VmDetailSerializer, 404: ErrorSerializer})
    def get(self, request: Request, vm_id: int) -> Response:
        vm = get_object_or_404(vm_list(request.user).prefetch_related("events__user"), pk=vm_id)
        role = role_of(actor_from_request(request, Via.API), vm.project)
        context: dict[str, Any] = {"can_change": role is not None and RANK[Role(role)] >= RANK[Role.OPERATOR]}  # user_data
        try:  # the VM's host may be down (issue 15): the page answers all the same, saying so
            with closing(hypervisor.get_hypervisor(vm.host.libvirt_uri)) as hv:
                context["state"] = services.vm_sync_state(vm=vm, hv=hv)
                if context["state"] not in ("", "missing"):
                    context["live_port"] = hv.console(vm.name).port
        except VaporError as exc:
            context["state"] = f"unknown ({exc.message})"
        return Response(VmDetailSerializer(vm, context=context).data)

    patch = hardware_views.vm_patch  # day two: hardware (PATCH memory, vCPUs, maxima, boot order, autostart)

    @extend_schema(
        operation_id="vms_destroy",
        parameters=[OpenApiParameter("keep_disks", bool, description="Keep the volumes Vapor created.")],
        responses={204: None, 404: ErrorSerializer, 409: ErrorSerializer, 500: ErrorSerializer, 503: ErrorSerializer},
    )
    def delete(self, request: Request, vm_id: int) -> Response:
        vm = get_object_or_404(vm_list(request.user), pk=vm_id)
        keep = request.query_params.get("keep_disks", "").lower() in {"1", "true", "yes"}
        services.vm_delete(vm=vm, keep_disks=keep, actor=actor_from_request(request, Via.API))
        return Response(status=status.HTTP_204_NO_CONTENT)


def _action_view(action: str) -> type[APIView]:
    class View(APIView):
        queryset = VirtualMachine.objects.all()
        required_perms = {"POST": ["change"]}

        @extend_schema(operation_id=f"vms_{action.replace('-', '_')}", request=None, responses={200: VmSerializer, **ERRORS})
        def post(self, request: Request, vm_id: int) -> Response:
            vm = get_object_or_404(vm_list(request.user), pk=vm_id)
            vm = services.vm_action(vm=vm, action=action, actor=actor_from_request(request, Via.API))
            return Response(VmSerializer(vm_list(request.user).get(pk=vm.pk)).data)

    View.__name__ = View.__qualname__ = f"Vm{action.title().replace('-', '')}View"
    return View


ACTION_VIEWS = {action: _action_view(action) for action in services.ACTIONS}

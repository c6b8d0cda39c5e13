"""Hypervisor host endpoints (issue 15), under /api/v1/hosts. Thin: parse, call `vms.services.hosts`, render.

Any signed-in user may read the hosts (a VM request may name one, and the
list says which are up and how full); adding, changing and removing them is
for superusers and users given `vms.add_host` / `change_host` /
`delete_host` (the services refuse the others with 403).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from projects.access import actor_from_request
from projects.choices import Via
from vaporsite.api import ErrorSerializer
from vaporsite.pagination import PAGE_DESCRIPTION, PAGE_PARAMETERS, page_serializer, paginated
from vms.api.host_serializers import HostInSerializer, HostOutSerializer, host_out
from vms.host_models import Host
from vms.services import hosts as services

ERRORS = {400: ErrorSerializer, 403: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer}
REQUIRE_UP = OpenApiParameter(
    "require_up",
    bool,
    description="Refuse (400 on `uri`, with libvirt's words) a host that does not answer now, and store nothing. "
    "Without it the host is added either way, down with the error until the health check finds it up.",
)


def render(hosts: Sequence[Host]) -> list[dict[str, Any]]:
    usage = services.hosts_usage(hosts)
    counts = services.vm_counts()
    return [host_out(host, vm_count=counts.get(host.pk, 0), usage=usage[host.pk]) for host in hosts]


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in {"1", "true", "yes"}


class HostCollectionView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="hosts_list",
        parameters=PAGE_PARAMETERS,
        responses={200: page_serializer("HostPage", "hosts", HostOutSerializer(many=True)), 400: ErrorSerializer},
        description=PAGE_DESCRIPTION + " Every signed-in user may list the hosts.",
    )
    def get(self, request: Request) -> Response:
        return paginated(request, Host.objects.order_by("name"), "hosts", render)

    @extend_schema(
        operation_id="hosts_create",
        request=HostInSerializer,
        parameters=[REQUIRE_UP],
        responses={201: HostOutSerializer, **ERRORS},
        description="Add a host (superusers, or `vms.add_host`). It is checked at once (bounded by VAPOR_HOST_CONNECT_TIMEOUT): "
        "the answer's `health`, `facts` and `last_error` say what was found. 409 `name_taken` / `uri_taken`.",
    )
    def post(self, request: Request) -> Response:
        serializer = HostInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.to_data()
        host = services.host_create(
            **data, actor=actor_from_request(request, Via.API), require_up=_truthy(request.query_params.get("require_up"))
        )
        return Response(render([host])[0], status=status.HTTP_201_CREATED)


class HostItemView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(operation_id="hosts_retrieve", responses={200: HostOutSerializer, 404: ErrorSerializer})
    def get(self, request: Request, name: str) -> Response:
        return Response(render([get_object_or_404(Host, name=name)])[0])

    @extend_schema(
        operation_id="hosts_partial_update",
        request=HostInSerializer(partial=True),
        responses={200: HostOutSerializer, **ERRORS},
        description="Change the given fields (superusers, or `vms.change_host`). The name cannot change; the default host's "
        "URI is VAPOR_LIBVIRT_URI; a host with VMs keeps its URI (409 `host_in_use`).",
    )
    def patch(self, request: Request, name: str) -> Response:
        host = get_object_or_404(Host, name=name)
        serializer = HostInSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        host = services.host_update(host=host, changes=serializer.to_data(), actor=actor_from_request(request, Via.API))
        return Response(render([host])[0])

    @extend_schema(
        operation_id="hosts_destroy",
        responses={204: None, 403: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer},
        description="Remove a host (superusers, or `vms.delete_host`): 409 `host_in_use` (naming its VMs in `vms`) while any "
        "VM is on it, 409 `host_default` for the default host.",
    )
    def delete(self, request: Request, name: str) -> Response:
        services.host_delete(host=get_object_or_404(Host, name=name), actor=actor_from_request(request, Via.API))
        return Response(status=status.HTTP_204_NO_CONTENT)


class HostCheckView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="hosts_check",
        request=None,
        responses={200: HostOutSerializer, 403: ErrorSerializer, 404: ErrorSerializer},
        description="Read the host now (superusers, or `vms.change_host`): health, facts, last seen and error, as the schedule does.",
    )
    def post(self, request: Request, name: str) -> Response:
        host = services.host_check(host=get_object_or_404(Host, name=name), actor=actor_from_request(request, Via.API))
        return Response(render([host])[0])

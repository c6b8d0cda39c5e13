"""`POST /api/v1/virtualmachines/{id}/console`: a one-time ticket for a VM's browser console."""

from __future__ import annotations

from contextlib import closing

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from projects.access import actor_from_request
from projects.choices import Via
from vaporsite.api import ErrorSerializer, StrictSerializer
from vms import hypervisor
from vms.choices import ConsoleType
from vms.models import VirtualMachine
from vms.selectors import vm_list
from vms.services.consoles import console_ticket_issue


class ConsoleRequestSerializer(StrictSerializer):
    type = serializers.ChoiceField(choices=ConsoleType.choices, help_text="vnc: the graphical console; serial: the first serial port.")
    read_only = serializers.BooleanField(default=False, help_text="Watch without typing (serial consoles only).")  # type: ignore[assignment]


class ConsoleTicketSerializer(serializers.Serializer):
    url = serializers.CharField(help_text="The console page for a browser, with the ticket (a path on this site).")
    websocket = serializers.CharField(
        help_text="The websocket carrying the console's raw bytes, with the ticket (a path on this site: ws:// or wss://)."
    )
    ticket = serializers.CharField(help_text="Opens the console once, for this user, VM and type; worthless after expires_at.")
    expires_at = serializers.DateTimeField()
    type = serializers.ChoiceField(choices=ConsoleType.choices)
    read_only = serializers.BooleanField(help_text="True when the user may only watch: what the client sends is dropped.")  # type: ignore[assignment]


class VmConsoleView(APIView):
    """Tickets need `vms.use_console` (or `vms.watch_console` to watch a serial console) in the VM's project."""

    queryset = VirtualMachine.objects.all()
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="vms_console",
        request=ConsoleRequestSerializer,
        responses={
            201: ConsoleTicketSerializer,
            400: ErrorSerializer,
            403: ErrorSerializer,
            404: ErrorSerializer,
            409: ErrorSerializer,
            503: ErrorSerializer,
        },
        description=(
            "A one-time ticket (at most 60 s) for the VM's graphical (VNC) or serial console. Open `url` in a browser, or "
            "connect a websocket to `websocket` with an `Origin` header of this site: binary frames carry RFB (vnc) or the "
            "serial port's bytes. 409 `not_running` (with `state`) or `no_vnc` (with `graphics`)."
        ),
    )
    def post(self, request: Request, vm_id: int) -> Response:
        vm = get_object_or_404(vm_list(request.user), pk=vm_id)
        body = ConsoleRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        asked = body.validated_data
        actor = actor_from_request(request, Via.API)
        with closing(hypervisor.get_hypervisor(vm.host.libvirt_uri)) as hv:
            issued = console_ticket_issue(vm=vm, type=asked["type"], read_only=asked["read_only"], hv=hv, actor=actor)
        data = {
            # Paths, not absolute URLs: they hold behind any proxy, joined with the page's own origin.
            "url": f"/consoles/{vm.pk}/{issued.type}/#ticket={issued.ticket}",
            "websocket": f"/ws/consoles/{vm.pk}/{issued.type}?ticket={issued.ticket}",
            "ticket": issued.ticket,
            "expires_at": issued.expires_at,
            "type": issued.type,
            "read_only": issued.read_only,
        }
        return Response(ConsoleTicketSerializer(data).data, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})

"""VM template endpoints. Thin: parse, call a service, render."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from projects.access import actor_from_request, role_of
from projects.choices import RANK, Role, Via
from vaporsite.api import ErrorSerializer
from vaporsite.pagination import PAGE_DESCRIPTION, PAGE_PARAMETERS, page_serializer, paginated
from vms.api.template_serializers import TemplateOutSerializer, TemplateSerializer, template_out
from vms.models import VmTemplate
from vms.selectors import template_list
from vms.services import templates as services

ERRORS = {400: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer, 503: ErrorSerializer}  # 503: clone sources are checked


def render(template: VmTemplate, request: Request) -> dict[str, Any]:
    template = template_list().get(pk=template.pk) if not hasattr(template, "vm_count") else template
    out = {
        "id": template.pk,
        **template_out(services.template_data(template)),
        "iso_id": template.iso_id,
        "vm_count": template.vm_count,  # type: ignore[attr-defined]
        "created_at": template.created_at,
        "updated_at": template.updated_at,
    }
    cloud_init = out.get("cloud_init")
    if cloud_init is not None:  # user_data may hold secrets: only for those who may change the template
        cloud_init["user_data_set"] = "user_data" in cloud_init
        role = role_of(actor_from_request(request, Via.API), template.project)
        if role is None or RANK[Role(role)] < RANK[Role.OPERATOR]:
            cloud_init.pop("user_data", None)
    return out


class TemplateCollectionView(APIView):
    queryset = VmTemplate.objects.all()

    @extend_schema(
        operation_id="vm_templates_list",
        parameters=[*PAGE_PARAMETERS, OpenApiParameter("project", str, description="Only those of this project (by name).")],
        responses={200: page_serializer("TemplatePage", "templates", TemplateOutSerializer(many=True)), 400: ErrorSerializer},
        description=PAGE_DESCRIPTION + " Only the templates of your projects (every template for superusers).",
    )
    def get(self, request: Request) -> Response:
        templates = template_list(request.user, project=request.query_params.get("project"))
        return paginated(request, templates, "templates", lambda page: [render(t, request) for t in page])

    @extend_schema(operation_id="vm_templates_create", request=TemplateSerializer, responses={201: TemplateOutSerializer, **ERRORS})
    def post(self, request: Request) -> Response:
        serializer = TemplateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        template = services.template_create(data=serializer.to_data(), actor=actor_from_request(request, Via.API))
        return Response(render(template, request), status=status.HTTP_201_CREATED)


class TemplateItemView(APIView):
    queryset = VmTemplate.objects.all()

    @extend_schema(operation_id="vm_templates_retrieve", responses={200: TemplateOutSerializer, 404: ErrorSerializer})
    def get(self, request: Request, name: str) -> Response:
        return Response(render(get_object_or_404(template_list(request.user), name=name), request))

    @extend_schema(
        operation_id="vm_templates_partial_update",
        request=TemplateSerializer(partial=True),
        responses={200: TemplateOutSerializer, **ERRORS},
        description="Change the given fields; `disks` and `networks`, when given, replace the whole list.",
    )
    def patch(self, request: Request, name: str) -> Response:
        template = get_object_or_404(template_list(request.user), name=name)
        serializer = TemplateSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        data = serializer.to_data(base=services.template_data(template))
        template = services.template_update(template=template, data=data, actor=actor_from_request(request, Via.API))
        return Response(render(template, request))

    @extend_schema(
        operation_id="vm_templates_destroy",
        responses={204: None, 404: ErrorSerializer, 409: ErrorSerializer},
        description="409 while VMs made from the template exist (failed VMs do not count).",
    )
    def delete(self, request: Request, name: str) -> Response:
        template = get_object_or_404(template_list(request.user), name=name)
        services.template_delete(template=template, actor=actor_from_request(request, Via.API))
        return Response(status=status.HTTP_204_NO_CONTENT)

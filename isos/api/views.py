"""ISO library endpoints. Thin: parse, call a service, render."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from isos import services
from isos.api.serializers import (
    IsoCreateSerializer,
    IsoDetailSerializer,
    IsoFilterSerializer,
    IsoSerializer,
    IsoUpdateSerializer,
)
from isos.choices import IsoStatus
from isos.models import IsoImage
from isos.selectors import iso_list
from vaporsite.api import ErrorSerializer
from vaporsite.pagination import PAGE_DESCRIPTION, PAGE_PARAMETERS, PAGE_PARAMS, page_serializer, paginated


class IsoCollectionView(APIView):
    queryset = IsoImage.objects.all()

    @extend_schema(
        operation_id="isos_list",
        parameters=[
            OpenApiParameter("tag", str, many=True, description="Only ISOs with this tag (repeat for all of several)."),
            OpenApiParameter("os_type", str),
            OpenApiParameter("architecture", str),
            OpenApiParameter("status", str),
            OpenApiParameter("search", str, description="Substring of name, description, path, os_variant or label."),
            *PAGE_PARAMETERS,
        ],
        responses={200: page_serializer("IsoPage", "isos", IsoSerializer(many=True)), 400: ErrorSerializer},
        description=PAGE_DESCRIPTION,
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        query: dict[str, Any] = {k: v for k, v in params.items() if k != "tag" and k not in PAGE_PARAMS}
        if "tag" in params:
            query["tag"] = params.getlist("tag")
        filters = IsoFilterSerializer(data=query)
        filters.is_valid(raise_exception=True)
        isos = iso_list(filters=dict(filters.validated_data))
        return paginated(request, isos, "isos", lambda page: IsoSerializer(page, many=True).data)

    @extend_schema(
        operation_id="isos_create",
        request=IsoCreateSerializer,
        responses={201: IsoSerializer, 202: IsoSerializer, 400: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer},
        description="Register a file on the host (`path`, 201) or download one (`url`, 202 with status `downloading`).",
    )
    def post(self, request: Request) -> Response:
        serializer = IsoCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if data.get("url"):
            iso = services.iso_create_download(url=data["url"], meta=serializer.metadata(), checksum=data.get("checksum", ""))
        else:
            iso = services.iso_register_path(path=data["path"], meta=serializer.metadata())
        iso = iso_list().get(pk=iso.pk)
        code = status.HTTP_202_ACCEPTED if iso.status == IsoStatus.DOWNLOADING else status.HTTP_201_CREATED
        location = request.build_absolute_uri(reverse("iso-detail", args=[iso.pk]))
        return Response(IsoSerializer(iso).data, status=code, headers={"Location": location})


class IsoItemView(APIView):
    queryset = IsoImage.objects.all()

    def _get(self, iso_id: str) -> IsoImage:
        return get_object_or_404(iso_list(), pk=iso_id)

    @extend_schema(operation_id="isos_retrieve", responses={200: IsoDetailSerializer, 404: ErrorSerializer})
    def get(self, request: Request, iso_id: str) -> Response:
        return Response(IsoDetailSerializer(self._get(iso_id)).data)

    @extend_schema(
        operation_id="isos_partial_update",
        request=IsoUpdateSerializer,
        responses={200: IsoSerializer, 400: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer},
    )
    def patch(self, request: Request, iso_id: str) -> Response:
        iso = self._get(iso_id)
        serializer = IsoUpdateSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        services.iso_update(iso=iso, changes=dict(serializer.validated_data))
        return Response(IsoSerializer(self._get(iso_id)).data)

    @extend_schema(operation_id="isos_destroy", responses={204: None, 404: ErrorSerializer, 409: ErrorSerializer})
    def delete(self, request: Request, iso_id: str) -> Response:
        services.iso_delete(iso=self._get(iso_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class _IsoActionView(APIView):
    """POST .../{iso_id}/<action>; needs the `change` permission."""

    queryset = IsoImage.objects.all()
    required_perms = {"POST": ["change"]}
    action_name = ""

    def act(self, iso: IsoImage) -> IsoImage:
        raise NotImplementedError

    def post(self, request: Request, iso_id: str) -> Response:
        iso = self.act(get_object_or_404(IsoImage, pk=iso_id))
        return Response(IsoSerializer(iso_list().get(pk=iso.pk)).data)


def _action_view(name: str, service: Any, summary: str) -> type[_IsoActionView]:
    decorated = extend_schema(
        operation_id=f"isos_{name}",
        request=None,
        summary=summary,
        responses={200: IsoSerializer, 404: ErrorSerializer, 409: ErrorSerializer},
    )

    class View(_IsoActionView):
        action_name = name

        def act(self, iso: IsoImage) -> IsoImage:
            return service(iso=iso)

        @decorated
        def post(self, request: Request, iso_id: str) -> Response:
            return super().post(request, iso_id)

    View.__name__ = View.__qualname__ = f"Iso{name.title()}View"
    return View


IsoCancelView = _action_view("cancel", services.iso_cancel, "Stop a download (status becomes cancelled, partial file removed).")
IsoRetryView = _action_view("retry", services.iso_retry, "Start a failed or cancelled download or hashing again.")
IsoRehashView = _action_view("rehash", services.iso_rehash, "Hash the file again in the background.")

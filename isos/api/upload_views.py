"""ISO upload endpoints (docs/iso-upload.md). Thin: check the request's shape, call isos.uploads, render.

The chunk's body is never parsed by DRF (no `request.data`): the service reads it from the request's stream
in bounded reads, so VAPOR_MAX_BODY_BYTES (the parsers' limit for JSON and forms) does not apply to it; the
ISO size limit and the chunk limit (isos.uploads.MAX_CHUNK) do.
"""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from isos import uploads
from isos.api.serializers import IsoUploadCreateSerializer, IsoUploadSerializer
from isos.models import IsoImage, IsoUpload
from vaporsite.api import ErrorSerializer

# Every method needs the permission to add an ISO (an upload is how one is added); an upload is its owner's only.
ADD_ONLY = {method: ["add"] for method in ("GET", "HEAD", "POST", "PUT", "DELETE")}

PROTOCOL = (
    "Upload an ISO from the client's machine in chunks, resumable after a cut. 1) POST the file's name and size "
    "(201, `offset` 0). 2) PUT each chunk to the upload's URL with `Content-Type: application/octet-stream` and "
    "`Content-Range: bytes START-END/SIZE` (END inclusive, at most 64 MiB per chunk); START must equal the upload's "
    "`offset`, else 409 `offset_mismatch` whose `offset` says where to continue. 3) After a cut, GET (or HEAD: "
    "`Upload-Offset` header) the upload and send from its `offset`. The chunk with the last byte answers 201 with "
    "`iso` set: the file was checked (ISO 9660/UDF), linked into the download directory and registered READY with "
    "the md5 and sha256 computed while it was written. DELETE cancels and removes the partial file."
)


def _body(upload: IsoUpload, iso: IsoImage | None = None) -> dict[str, Any]:
    data = dict(IsoUploadSerializer(upload).data)
    data["iso"] = iso.pk if iso is not None else None
    return data


def _with_offset(response: Response, upload: IsoUpload) -> Response:
    response["Upload-Offset"] = str(upload.offset)
    return response


class IsoUploadCollectionView(APIView):
    queryset = IsoImage.objects.all()
    required_perms = ADD_ONLY

    @extend_schema(
        operation_id="isos_uploads_create",
        request=IsoUploadCreateSerializer,
        responses={201: IsoUploadSerializer, 400: ErrorSerializer, 403: ErrorSerializer, 409: ErrorSerializer},
        summary="Start an ISO upload",
        description=PROTOCOL,
    )
    def post(self, request: Request) -> Response:
        serializer = IsoUploadCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        upload = uploads.iso_upload_create(
            owner_id=request.user.pk,
            filename=data["filename"],
            size=data["size"],
            meta=serializer.metadata(),
            sha256=data.get("sha256", ""),
        )
        location = request.build_absolute_uri(reverse("iso-upload-detail", args=[upload.pk]))
        return _with_offset(Response(_body(upload), status=status.HTTP_201_CREATED, headers={"Location": location}), upload)


class IsoUploadItemView(APIView):
    queryset = IsoImage.objects.all()
    required_perms = ADD_ONLY

    @extend_schema(
        operation_id="isos_uploads_retrieve",
        responses={200: IsoUploadSerializer, 404: ErrorSerializer},
        summary="Where an upload stands (resume from `offset`)",
        description="Also as HEAD, with the offset in the `Upload-Offset` header.",
    )
    def get(self, request: Request, upload_id: str) -> Response:
        upload = uploads.iso_upload_get(upload_id=upload_id, owner_id=request.user.pk)
        return _with_offset(Response(_body(upload)), upload)

    @extend_schema(
        operation_id="isos_uploads_chunk",
        request={"application/octet-stream": OpenApiTypes.BINARY},
        parameters=[
            OpenApiParameter(
                "Content-Range",
                str,
                OpenApiParameter.HEADER,
                required=True,
                description="`bytes START-END/SIZE`: END inclusive, START the upload's offset, SIZE the whole file's.",
            )
        ],
        responses={
            200: OpenApiResponse(IsoUploadSerializer, description="Chunk written; more to come."),
            201: OpenApiResponse(IsoUploadSerializer, description="The last chunk: `iso` is the new READY ISO's id."),
            400: ErrorSerializer,
            404: ErrorSerializer,
            409: OpenApiResponse(ErrorSerializer, description="`offset_mismatch` (with `offset`), `upload_busy`, or a name clash."),
        },
        summary="Send one chunk of an upload",
    )
    def put(self, request: Request, upload_id: str) -> Response:
        upload = uploads.iso_upload_get(upload_id=upload_id, owner_id=request.user.pk)
        length = request.META.get("CONTENT_LENGTH") or ""
        start, count, size = uploads.parse_content_range(
            request.META.get("HTTP_CONTENT_RANGE", ""), length=int(length) if length.isdigit() else None
        )
        # The Django request itself: a file-like stream of the body, read by the service in bounded pieces.
        result = uploads.iso_upload_append(upload=upload, start=start, count=count, size=size, stream=request._request)
        if result.iso is None:
            return _with_offset(Response(_body(result.upload)), result.upload)
        location = request.build_absolute_uri(reverse("iso-detail", args=[result.iso.pk]))
        response = Response(_body(result.upload, result.iso), status=status.HTTP_201_CREATED, headers={"Location": location})
        return _with_offset(response, result.upload)

    @extend_schema(
        operation_id="isos_uploads_destroy",
        responses={204: None, 404: ErrorSerializer, 409: ErrorSerializer},
        summary="Cancel an upload and remove its partial file",
    )
    def delete(self, request: Request, upload_id: str) -> Response:
        uploads.iso_upload_cancel(upload=uploads.iso_upload_get(upload_id=upload_id, owner_id=request.user.pk))
        return Response(status=status.HTTP_204_NO_CONTENT)

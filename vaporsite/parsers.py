"""Request body parsers that hold the body to DATA_UPLOAD_MAX_MEMORY_SIZE (VAPOR_MAX_BODY_BYTES).

DRF hands its parsers the raw request stream, past the check Django makes
when it reads a body itself, so a JSON body of any size would be read whole.
A module of its own: DRF's views import the parser classes named in the
settings while they load, and `vaporsite.api` imports those views.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework import exceptions, parsers, status


class BodyTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "body_too_large"


def _bounded(stream: IO[Any] | None) -> IO[bytes]:
    """The body, refused past DATA_UPLOAD_MAX_MEMORY_SIZE: DRF hands parsers the raw stream, past Django's own check."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    data = stream.read(limit + 1) if stream is not None else b""
    if len(data) > limit:
        raise _too_large()
    return io.BytesIO(data)


class BoundedJSONParser(parsers.JSONParser):
    def parse(self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        return super().parse(_bounded(stream), media_type, parser_context)


class BoundedFormParser(parsers.FormParser):
    def parse(self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        return super().parse(_bounded(stream), media_type, parser_context)


def _too_large() -> BodyTooLarge:
    return BodyTooLarge(f"the request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes (VAPOR_MAX_BODY_BYTES)")


class BoundedMultiPartParser(parsers.MultiPartParser):
    """Django's multipart parser applies the limit itself; its refusal becomes the API's error shape."""

    def parse(self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RequestDataTooBig:
            raise _too_large() from None

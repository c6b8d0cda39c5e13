"""API plumbing shared by every app: one error shape for every failure, and
input serializers that refuse fields they do not know.

Every error body has ``detail`` (words) and ``code``; input errors add
``field`` (the first field at fault) and ``errors`` (field -> messages).
An unexpected exception is a 500 in the same shape, whatever DEBUG says.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from vaporsite.errors import VaporError

log = logging.getLogger("vapor.api")


class ErrorSerializer(serializers.Serializer):
    """The body of every error response (for the OpenAPI schema)."""

    detail = serializers.CharField()
    code = serializers.CharField()
    field = serializers.CharField(required=False)
    refused = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Placement's refusals (codes no_host, host_unavailable, host_full): host name -> reasons in words.",
    )


# "errors" is also a Serializer property, so the field is added after the class exists.
ErrorSerializer._declared_fields["errors"] = serializers.DictField(required=False, help_text="field -> messages")


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, so a typo in a script is a 400, not a silent no-op."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["unknown field"] for name in unknown})
        return super().to_internal_value(data)


def _first_field(errors: Any) -> str | None:
    """The dotted path of the first field at fault, e.g. ``disks.1.size``."""
    if isinstance(errors, dict):
        for key, value in errors.items():
            if key == "non_field_errors":
                continue
            nested = _first_field(value)
            return f"{key}.{nested}" if nested else str(key)
    if isinstance(errors, list):
        for index, item in enumerate(errors):
            if isinstance(item, dict | list) and item:
                nested = _first_field(item)
                return f"{index}.{nested}" if nested else str(index)
    return None


def _flatten(detail: Any) -> str:
    if isinstance(detail, dict):
        for key, value in detail.items():
            text = _flatten(value)
            return text if key == "non_field_errors" else f"{key}: {text}"
    if isinstance(detail, list):
        for item in detail:
            if item:
                return _flatten(item)
        return ""
    return str(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, VaporError):
        return Response(exc.as_dict(), status=exc.status)
    if isinstance(exc, exceptions.ValidationError):
        body: dict[str, Any] = {"detail": _flatten(exc.detail) or "Invalid input.", "code": "invalid", "errors": exc.detail}
        field = _first_field(exc.detail)
        if field:
            body["field"] = field
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "detail" in response.data:
        detail = response.data["detail"]
        response.data = {"detail": str(detail), "code": getattr(detail, "code", "error")}
    if response is None:
        return _server_error(exc, context)
    return response


def _server_error(exc: Exception, context: dict[str, Any]) -> Response:
    """A bug or an unforeseen failure: the traceback goes to the log, never to the client.

    The body names a reference that is also in the log line, so a user can
    report it; neither the exception's text (it may hold paths, SQL or
    values) nor a traceback leaves the server, and Django's debug page is
    never shown, even with DEBUG on.
    """
    reference = uuid.uuid4().hex[:12]
    request = context.get("request")
    where = f"{request.method} {request.path}" if request is not None else "?"
    log.error("unexpected error %s on %s", reference, where, exc_info=exc)
    set_rollback()
    return Response(
        {"detail": f"Internal server error (reference {reference}); the details are in the server log.", "code": "server_error"},
        status=status.HTTP_500_INTERNAL_SERVER_ERROR,
    )

"""The project's own exceptions. Services raise these; entry points map them.

Each carries the HTTP status the API answers with, a stable machine code,
a message in words, and (for input problems) the request field at fault.
"""

from __future__ import annotations

from typing import Any


class VaporError(Exception):
    status = 500
    code = "error"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code:
            self.code = code
        self.extra = extra

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"detail": self.message, "code": self.code}
        if self.field:
            body["field"] = self.field
            body["errors"] = {self.field: [self.message]}
        body.update(self.extra)
        return body


class InvalidInput(VaporError):
    status = 400
    code = "invalid"


class NotFound(VaporError):
    status = 404
    code = "not_found"


class Conflict(VaporError):
    status = 409
    code = "conflict"


class HypervisorError(VaporError):
    """libvirt failed; the message is libvirt's own, in words."""

    status = 500
    code = "hypervisor_error"


class ServiceUnavailable(HypervisorError):
    """libvirtd cannot be reached (stopped, restarting): worth trying again later.

    A HypervisorError still, so code that handles libvirt failures handles
    this one too; only the status and code differ.
    """

    status = 503
    code = "hypervisor_unavailable"


class Forbidden(VaporError):
    """The caller may see the object but not do this to it (a viewer's write, say)."""

    status = 403
    code = "forbidden"

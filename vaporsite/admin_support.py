"""Admin pages whose forms save through a service, as the API does.

The form's `clean` calls the service, which validates and writes the real
row(s); its errors are shown on the form field they name. Django's own
ModelForm validation and saving are then skipped, so no rule is written
twice. The admin's add/change views run in one transaction, so anything
failing after `clean` still rolls the service's writes back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

from vaporsite.errors import VaporError


class ServiceForm(forms.ModelForm):
    """A ModelForm whose `clean` saves through a service and sets `created`."""

    created: Any = None
    # Service field names (e.g. "networks.0.source") -> this form's field names.
    field_aliases: Mapping[str, str] = {}

    def _post_clean(self) -> None:
        """Skip ModelForm's instance validation: the service validated and saved in `clean`."""

    def service_error(self, exc: VaporError) -> None:
        field = self.field_aliases.get(exc.field or "", exc.field)
        self.add_error(field if field in self.fields else None, exc.message)


class VaporModelAdmin(admin.ModelAdmin):
    """Refuses (403) a list action the user may not run, where Django would ignore the POST
    and show the list again: a refusal should look like one."""

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        action = request.POST.get("action", "") if request.method == "POST" else ""
        if action and action not in self.get_actions(request):
            raise PermissionDenied
        return super().changelist_view(request, extra_context)


class ServiceSavedAdmin(VaporModelAdmin):
    """Saving is done by the form's service call; the admin only logs and redirects."""

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Any:
        return form.instance if change else form.created

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        """Nothing: the service saved the row while the form was validated."""

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

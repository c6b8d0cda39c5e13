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
from django.http import HttpRequest

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


class ServiceSavedAdmin(admin.ModelAdmin):
    """Saving is done by the form's service call; the admin only logs and redirects."""

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Any:
        return form.instance if change else form.created

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        """Nothing: the service saved the row while the form was validated."""

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

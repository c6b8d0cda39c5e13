"""Admin pages whose forms save through a service, as the API does.

The form's `clean` calls the service, which validates and writes the real
row(s); its errors are shown on the form field they name. Django's own
ModelForm validation and saving are then skipped, so no rule is written
twice. The admin's add/change views run in one transaction, so anything
failing after `clean` still rolls the service's writes back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

from vaporsite.errors import VaporError


@dataclass(frozen=True)
class ErrorRows:
    """Formset rows a service error may name by index: "disks.1.size" is field "size" of `forms[1]`."""

    formset: Any
    forms: Sequence[forms.BaseForm]  # numbered as the service numbers them
    aliases: Mapping[str, str] = field(default_factory=dict)  # service field -> the row form's field


def show_service_error(
    exc: VaporError, target: Any, *, aliases: Mapping[str, str] | None = None, rows: Mapping[str, ErrorRows] | None = None
) -> None:
    """Show a service error where the mistake is: on the field it names (e.g. "disks.1.size").

    A name under a key of `rows` ("disks") lands on that row's field, "disks.1"
    on the row, anything else under it on the rows' formset. Other names land
    on `target`'s field (through `aliases`, e.g. "memory" -> "memory_mb") if
    it has one, else on `target` as a whole: a form's non-field errors, or a
    formset's non-form errors when `target` is a formset.
    """
    name = exc.field or ""
    parts = name.split(".")
    group = (rows or {}).get(parts[0])
    if group is not None:
        if len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) < len(group.forms):
            row = group.forms[int(parts[1])]
            row_field = group.aliases.get(parts[2], parts[2]) if len(parts) > 2 else None
            row.add_error(row_field if row_field in row.fields else None, exc.message)
        else:
            group.formset.non_form_errors().append(exc.message)
        return
    if isinstance(target, forms.BaseFormSet):
        target.non_form_errors().append(exc.message)
        return
    name = (aliases or {}).get(name, name)
    target.add_error(name if name in target.fields else None, exc.message)


class ServiceForm(forms.ModelForm):
    """A ModelForm whose `clean` saves through a service and sets `created`."""

    created: Any = None
    # Service field names (e.g. "networks.0.source") -> this form's field names.
    field_aliases: Mapping[str, str] = {}

    def _post_clean(self) -> None:
        """Skip ModelForm's instance validation: the service validated and saved in `clean`."""

    def service_error(self, exc: VaporError) -> None:
        show_service_error(exc, self, aliases=self.field_aliases)


class ReadOnlyAdmin(admin.ModelAdmin):
    """A record kept by the code (audit entries, console tickets): listed and shown, never added, changed or deleted here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class VaporModelAdmin(admin.ModelAdmin):
    """Refuses (403) a list action the user may not run, where Django would ignore the POST
    and show the list again: a refusal should look like one. Pages are titled by what they
    show, the same words as the breadcrumb and the index: "ISO images", "ISO image: NAME"
    (not Django's "Select ISO image to change" / "Change ISO image")."""

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        action = request.POST.get("action", "") if request.method == "POST" else ""
        if action and action not in self.get_actions(request):
            raise PermissionDenied
        title = str(self.model._meta.verbose_name_plural)
        return super().changelist_view(request, {"title": title[:1].upper() + title[1:], **(extra_context or {})})

    def render_change_form(
        self, request: HttpRequest, context: dict[str, Any], add: bool = False, change: bool = False, form_url: str = "", obj: Any = None
    ) -> Any:
        if obj is not None and context.get("title", "").startswith(("Change ", "View ")):
            name = str(self.model._meta.verbose_name)
            context.update(title=f"{name[:1].upper() + name[1:]}: {obj}", subtitle=None)
        return super().render_change_form(request, context, add, change, form_url, obj)


class ServiceSavedAdmin(VaporModelAdmin):
    """Saving is done by the form's service call; the admin only logs and redirects."""

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Any:
        return form.instance if change else form.created

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        """Nothing: the service saved the row while the form was validated."""

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def delete_through_service(self, request: HttpRequest, obj: Any) -> None:
        """Delete `obj` the way the API does; a subclass names its service (a VaporError refuses)."""
        raise NotImplementedError

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        self.delete_through_service(request, obj)

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None) -> Any:
        """The service's refusal (in use, being provisioned, ...) is shown on the object's page."""
        try:
            return super().delete_view(request, object_id, extra_context)
        except VaporError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            opts = self.model._meta
            return redirect(f"admin:{opts.app_label}_{opts.model_name}_change", object_id)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Model]) -> None:
        """Each row through the service; a refused one is named and the others still go."""
        for obj in queryset:
            try:
                self.delete_through_service(request, obj)
            except VaporError as exc:
                self.message_user(request, exc.message, messages.ERROR)

"""The ISO library in the admin: the operators' main view of it.

Adding, editing and deleting go through `isos.services`, exactly as the API
does: a deleted ISO's id is retired, a downloaded file goes with it, and an
ISO in use is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from guestos.choices import OsType
from isos import services
from isos.choices import BUSY_STATUSES, Architecture, IsoStatus
from isos.models import IsoImage, IsoTag, RetiredIsoId
from isos.services import IsoMetadata
from vaporsite.admin_support import ServiceForm, ServiceSavedAdmin
from vaporsite.errors import VaporError

UPLOAD_CHUNK_BYTES = 8 * 1024**2  # what upload.js sends per request
SCAN_MINUTES = 5  # the schedule isos.0006 creates
SCAN_DETAILS_SHOWN = 20  # file-by-file messages after "Scan now"


class IsoAddForm(ServiceForm):
    """Register a host file or start a download; the service does the work."""

    path = forms.CharField(required=False, max_length=4096, help_text="A file inside the allowed ISO directories.")
    url = forms.URLField(label="URL", required=False, max_length=2048, assume_scheme="https", help_text="http(s) URL to download.")
    checksum = forms.CharField(required=False, max_length=80, help_text="sha256:HEX or md5:HEX (downloads only).")
    name = forms.CharField(required=False, max_length=255, help_text="Defaults to the file name.")
    os_type = forms.ChoiceField(label="OS type", required=False, choices=OsType.choices)
    os_variant = forms.CharField(
        label="OS variant", required=False, max_length=64, help_text="osinfo-db short id; guessed from the label if empty."
    )
    architecture = forms.ChoiceField(required=False, choices=Architecture.choices)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    tag_names = forms.CharField(required=False, label="Tags", help_text="Comma-separated.")

    class Meta:
        model = IsoImage
        fields: list[str] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        roots = ", ".join(str(root) for root in settings.VAPOR.allowed_iso_roots)
        self.fields["path"].help_text = f"A file inside one of: {roots}."

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        if bool(data.get("path")) == bool(data.get("url")):
            raise forms.ValidationError("Give either a path or a URL.")
        meta = IsoMetadata(
            name=data.get("name", ""),
            os_type=data.get("os_type", ""),
            os_variant=data.get("os_variant", ""),
            architecture=data.get("architecture", ""),
            description=data.get("description", ""),
            tags=tuple(t.strip() for t in data.get("tag_names", "").split(",") if t.strip()),
        )
        # The admin's add view runs in one transaction: if anything after this
        # fails, the row goes too and the queued task is never sent.
        try:
            if data.get("url"):
                self.created = services.iso_create_download(url=data["url"], meta=meta, checksum=data.get("checksum", ""))
            else:
                if data.get("checksum"):
                    raise forms.ValidationError({"checksum": "Only used with a URL."})
                self.created = services.iso_register_path(path=data["path"], meta=meta)
        except VaporError as exc:
            self.service_error(exc)
        return data


class IsoChangeForm(ServiceForm):
    class Meta:
        model = IsoImage
        fields = ["name", "os_type", "os_variant", "architecture", "description", "tags"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors or self.instance.pk is None:
            return data
        changes: dict[str, object] = {k: data[k] for k in self.Meta.fields if k in data and k != "tags"}
        changes["tags"] = [t.name for t in data.get("tags", [])]
        try:
            services.iso_update(iso=self.instance, changes=changes)
        except VaporError as exc:
            self.service_error(exc)
        return data


def _run_each(label: str, service: Callable[..., IsoImage]) -> Callable[..., None]:
    def action(modeladmin: IsoImageAdmin, request: HttpRequest, queryset: QuerySet[IsoImage]) -> None:
        done, failed = 0, []
        for iso in queryset:
            try:
                service(iso=iso)
                done += 1
            except VaporError as exc:
                failed.append(exc.message)
        if done:
            modeladmin.message_user(request, f"{label}: {done} ISO(s).", messages.SUCCESS)
        for message in failed:
            modeladmin.message_user(request, message, messages.WARNING)

    action.__name__ = f"action_{service.__name__}"
    return action


@admin.register(IsoImage)
class IsoImageAdmin(ServiceSavedAdmin):
    list_display = ["name", "status_column", "human_size", "os_column", "boot_type", "use_count", "last_used", "tag_list"]
    list_filter = ["status", "os_type", "architecture", "boot_type", "tags"]
    search_fields = ["id", "name", "path", "description", "os_variant", "volume_label", "md5_hash", "sha256_hash"]
    readonly_fields = [
        "id", "path", "status_column", "human_size", "boot_type", "volume_label", "md5_hash", "sha256_hash",
        "source_url", "expected_checksum", "origin", "error", "added_at", "last_used", "use_count",
        "used_by", "host_copies",
    ]  # fmt: skip
    filter_horizontal = ["tags"]
    actions = [
        admin.action(description="Hash the selected ISOs again", permissions=["change"])(_run_each("Re-hashing", services.iso_rehash)),
        admin.action(description="Retry the selected failed or cancelled ISOs", permissions=["change"])(
            _run_each("Retrying", services.iso_retry)
        ),
        admin.action(description="Cancel the selected downloads", permissions=["change"])(_run_each("Cancelled", services.iso_cancel)),
    ]
    change_list_template = "admin/isos/isoimage/change_list.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[IsoImage]:
        return super().get_queryset(request).prefetch_related("tags")

    def get_form(self, request: HttpRequest, obj: IsoImage | None = None, change: bool = False, **kwargs: Any) -> Any:
        kwargs["form"] = IsoChangeForm if obj else IsoAddForm
        if obj is None:
            kwargs["fields"] = [f for f in IsoAddForm.base_fields]
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: IsoImage | None = None) -> Any:
        if obj is None:
            upload = format_html(
                'Or <a href="{}" id="vapor-upload-link">upload a file from your computer</a> (resumable, with a progress bar).',
                reverse("admin:isos_isoimage_upload"),
            )
            return [
                ("Source", {"fields": ["path", "url", "checksum"], "description": upload}),
                ("Metadata", {"fields": ["name", "os_type", "os_variant", "architecture", "description", "tag_names"]}),
            ]
        return [
            (None, {"fields": ["id", "name", "path", "status_column", "error"]}),
            ("Metadata", {"fields": ["os_type", "os_variant", "architecture", "description", "tags"]}),
            ("File", {"fields": ["human_size", "boot_type", "volume_label", "md5_hash", "sha256_hash"]}),
            ("Source", {"fields": ["origin", "source_url", "expected_checksum"] if obj.source_url else ["origin"]}),
            ("Usage", {"fields": ["added_at", "last_used", "use_count", "used_by", "host_copies"]}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: IsoImage | None = None) -> Any:
        return self.readonly_fields if obj else []

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        # Attachments and templates PROTECT an ISO: Django would refuse with
        # its own page listing bare attachment rows. The service refuses
        # instead, naming the VMs and templates, under the row lock.
        deleted, counts, perms_needed, _protected = super().get_deleted_objects(objs, request)
        return deleted, counts, perms_needed, []

    def delete_through_service(self, request: HttpRequest, obj: IsoImage) -> None:
        for note in services.iso_delete(iso=obj):  # copies left on hosts that are down
            self.message_user(request, note, messages.WARNING)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        busy = IsoImage.objects.filter(status__in=BUSY_STATUSES).exists()
        context = {
            "refresh_seconds": 3 if busy else 0,
            "iso_dirs": [str(directory) for directory in settings.VAPOR.iso_dirs],
            "scan_minutes": SCAN_MINUTES,
            "scan_settle_seconds": services.SCAN_SETTLE_SECONDS,
        }
        return super().changelist_view(request, {**(extra_context or {}), **context})

    def get_urls(self) -> list[URLPattern]:
        scan = path("scan/", self.admin_site.admin_view(require_POST(self.scan_view)), name="isos_isoimage_scan")
        upload = path("upload/", self.admin_site.admin_view(self.upload_view), name="isos_isoimage_upload")
        return [scan, upload, *super().get_urls()]

    def upload_view(self, request: HttpRequest) -> HttpResponse:
        """A file from the operator's machine: upload.js sends it in chunks to the upload API (isos.uploads)."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": "Upload an ISO image",
            "opts": IsoImage._meta,
            "has_view_permission": self.has_view_permission(request),
            "create_url": reverse("iso-upload-list"),
            "change_url": reverse("admin:isos_isoimage_change", args=["ISO_ID"]),
            "chunk_bytes": UPLOAD_CHUNK_BYTES,
            "chunk_mib": UPLOAD_CHUNK_BYTES // 1024**2,
            "max_bytes": settings.VAPOR.download_max_bytes,
            "download_dir": settings.VAPOR.download_dir,
            "os_types": OsType.choices,
            "architectures": Architecture.choices,
        }
        return TemplateResponse(request, "admin/isos/isoimage/upload.html", context)

    def scan_view(self, request: HttpRequest) -> HttpResponse:
        """ "Scan now": register what appeared in the ISO directories, then back to the list with what was found."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        report = services.iso_scan_dirs()
        level = messages.WARNING if report.errors else messages.SUCCESS
        self.message_user(request, f"Scanned {report.summary()}.", level)
        details = [
            *((messages.SUCCESS, f"Registered {p} (hashing in the background)") for p in report.registered),
            *((messages.WARNING, f"Changed: {p}: {why}") for p, why in report.changed),
            *((messages.ERROR, f"Refused {p}: {why}") for p, why in report.errors),
            *((messages.INFO, f"Skipped {p}: {why}") for p, why in report.skipped),
        ]
        for level, text in details[:SCAN_DETAILS_SHOWN]:
            self.message_user(request, text, level)
        if len(details) > SCAN_DETAILS_SHOWN:
            self.message_user(request, f"... and {len(details) - SCAN_DETAILS_SHOWN} more (the log has them all).", messages.INFO)
        return HttpResponseRedirect(reverse("admin:isos_isoimage_changelist"))

    @admin.display(description="Status", ordering="status")
    def status_column(self, obj: IsoImage) -> str:
        if obj.status in BUSY_STATUSES:
            percent = obj.progress
            shown = f"{percent:.0f}%" if percent is not None else filesizeformat(obj.bytes_done)
            return format_html(
                '{} <progress max="100" value="{}" title="{}" style="width:8em"></progress> {}',
                obj.get_status_display(),
                percent or 0,
                shown,
                shown,
            )
        if obj.status == IsoStatus.FAILED:
            return format_html('<span style="color:#ba2121" title="{}">Failed</span>', obj.error)
        return obj.get_status_display()

    @admin.display(description="Size", ordering="size")
    def human_size(self, obj: IsoImage) -> str:
        return filesizeformat(obj.size) if obj.size is not None else "-"

    @admin.display(description="OS", ordering="os_variant")
    def os_column(self, obj: IsoImage) -> str:
        return " / ".join(v for v in (obj.os_variant or obj.os_type, obj.architecture) if v) or "-"

    @admin.display(description="Tags")
    def tag_list(self, obj: IsoImage) -> str:
        return ", ".join(tag.name for tag in obj.tags.all())

    @admin.display(description="Source")
    def origin(self, obj: IsoImage) -> str:
        if obj.downloaded and not obj.source_url:
            return "Uploaded through Vapor; the file is deleted with this entry."
        if obj.downloaded:
            return "Downloaded by Vapor from the URL below; the file is deleted with this entry."
        return "A file on the host, registered by its path; the file stays when this entry is deleted."

    @admin.display(description="Added at", ordering="uploaded_at")
    def added_at(self, obj: IsoImage) -> str:
        return date_format(timezone.localtime(obj.uploaded_at), "Y-m-d H:i:s T")

    @admin.display(description="Used by")
    def used_by(self, obj: IsoImage) -> str:
        names = obj.attachments.values_list("vm__name", flat=True)
        return format_html_join(", ", "{}", ((n,) for n in names)) or "-"

    @admin.display(description="Copies on hosts")
    def host_copies(self, obj: IsoImage) -> str:
        """The copies remote hosts boot from (made by the VM app, `vms.services.iso_copies`), with their progress."""
        rows = [
            (c.host.name, c.get_status_display(), f"{c.progress:.0f}%" if c.progress is not None else "", c.path or c.error)
            for c in obj.host_copies.select_related("host").order_by("host__name")
        ]
        return format_html_join(mark_safe("<br>"), "{}: {} {} {}", rows) or "-"


@admin.register(IsoTag)
class IsoTagAdmin(admin.ModelAdmin):
    search_fields = ["name"]


@admin.register(RetiredIsoId)
class RetiredIsoIdAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "path", "deleted_at", "file_deleted"]
    search_fields = ["id", "name", "path"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

from django.contrib import admin

from vms.models import CdromAttachment, VirtualMachine


class CdromInline(admin.TabularInline):
    model = CdromAttachment
    extra = 0
    autocomplete_fields = ["iso"]
    readonly_fields = ["resolved_by"]


@admin.register(VirtualMachine)
class VirtualMachineAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "memory_mb", "vcpus", "created_at"]
    list_filter = ["status"]
    search_fields = ["name", "uuid"]
    readonly_fields = ["uuid", "created_at", "error"]
    inlines = [CdromInline]

"""Console tickets, read-only: who asked for which console, when, and whether and from where it was used.

The ticket itself is never shown (only its hash is kept). Console sessions, with their start and end, are
on each VM's event log.
"""

from __future__ import annotations

from django.contrib import admin

from vaporsite.admin_support import ReadOnlyAdmin
from vms.models import ConsoleTicket


@admin.register(ConsoleTicket)
class ConsoleTicketAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "user", "vm", "type", "read_only", "source_address", "expires_at", "used_at", "used_from"]
    list_filter = ["type", "read_only", ("used_at", admin.EmptyFieldListFilter)]
    list_select_related = ["user", "vm"]
    search_fields = ["user__username", "vm__name", "source_address", "used_from"]
    date_hierarchy = "created_at"
    exclude = ["token_hash"]

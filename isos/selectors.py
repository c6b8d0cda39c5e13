"""Reads of the ISO library."""

from __future__ import annotations

from typing import Any

from django.db.models import Exists, OuterRef, Q, QuerySet

from isos.models import IsoImage


def iso_list(*, filters: dict[str, Any] | None = None) -> QuerySet[IsoImage]:
    """ISOs matching the filters, by name, tags prefetched: two queries however many ISOs.

    Each tag is an EXISTS test rather than a join, so an ISO appears once without
    DISTINCT: a DISTINCT over every column would make the database read and sort
    the whole table before it can return the first page.
    """
    filters = filters or {}
    queryset = IsoImage.objects.prefetch_related("tags").order_by("name")
    links = IsoImage.tags.through.objects
    for tag in filters.get("tag", ()):
        queryset = queryset.filter(Exists(links.filter(isoimage_id=OuterRef("pk"), isotag__name=tag.lower())))
    for key in ("os_type", "architecture", "status"):
        if key in filters:
            queryset = queryset.filter(**{key: filters[key]})
    if term := filters.get("search"):
        queryset = queryset.filter(
            Q(name__icontains=term)
            | Q(description__icontains=term)
            | Q(path__icontains=term)
            | Q(os_variant__icontains=term)
            | Q(volume_label__icontains=term)
        )
    return queryset

"""Optional pages of the list endpoints, inside the spec's envelopes.

The spec answers a list as one object holding one array (``{"isos": [...]}``,
``{"virtualmachines": [...]}``) with every row. That stays the answer when the
request names neither ``limit`` nor ``offset``: scripts written against the
spec keep getting the whole list, in exactly that shape. A default page size
would silently hand them the first 100 rows of a larger library.

With ``limit`` (1..1000, default 100) or ``offset`` (default 0) the answer is
one page, in the same envelope with three keys beside the array:

    {"count": 2345, "next": ".../isos?limit=100&offset=100", "previous": null, "isos": [... 100 ISOs ...]}

``count`` is the number of rows in the whole (filtered) list; ``next`` and
``previous`` are full URLs keeping every other query parameter (the ISO
list's filters), null at either end. A malformed value is a 400 naming the
parameter rather than a silent default: a script asking for ``limit=5000``
learns the maximum instead of getting 1000 rows and no hint.

Every list is ordered by a unique column (the name), so pages neither overlap
nor skip rows while nothing changes. A page costs one COUNT query, one query
for its rows and the list's prefetches, whatever the table's size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django.db.models import Model, QuerySet
from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
PAGE_PARAMS = ("limit", "offset")  # query parameters the paginator reads (not filters)

M = TypeVar("M", bound=Model)

PAGE_PARAMETERS = [
    OpenApiParameter("limit", int, description=f"Rows per page, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})."),
    OpenApiParameter("offset", int, description="Rows to skip before the page (default 0)."),
]
PAGE_DESCRIPTION = (
    "Ordered by name. Without `limit` and `offset`, every row (the spec's shape). With either, one page: `limit` rows "
    f"(default {DEFAULT_LIMIT}, at most {MAX_LIMIT}) from `offset`, and beside the list `count` (rows in the whole list) "
    "and `next`/`previous` (the URLs of the pages around this one, null at the ends, other query parameters kept)."
)


def page_serializer(name: str, key: str, item: serializers.BaseSerializer[Any]) -> serializers.Serializer[Any]:
    """The schema of a list: the envelope's array under `key` (`item`, many=True); count, next and previous
    only when the request pages."""
    return inline_serializer(
        name=name,
        fields={
            "count": serializers.IntegerField(required=False, help_text="Paged requests: rows in the whole list (filters applied)."),
            "next": serializers.URLField(required=False, allow_null=True, help_text="Paged requests: the next page, null on the last."),
            "previous": serializers.URLField(
                required=False, allow_null=True, help_text="Paged requests: the previous page, null on the first."
            ),
            key: item,
        },
    )


def _param(request: Request, name: str, default: int, minimum: int, maximum: int | None) -> int:
    """A whole-number query parameter within bounds; absent or empty means `default`."""
    text = request.query_params.get(name, "").strip()
    if not text:
        return default
    value = int(text) if text.isascii() and text.isdigit() else -1
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
        raise serializers.ValidationError({name: [f"must be a whole number {bounds}"]})
    return value


def paginated(request: Request, queryset: QuerySet[M], key: str, render: Callable[[Sequence[M]], Any]) -> Response:
    """`queryset` rendered by `render` in the envelope `key`: all of it, or the page the request asks for."""
    if not any(name in request.query_params for name in PAGE_PARAMS):
        return Response({key: render(list(queryset))})
    limit = _param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _param(request, "offset", 0, 0, None)
    count = queryset.count()
    rows = list(queryset[offset : offset + limit]) if offset < count else []
    url = request.build_absolute_uri()
    following = replace_query_param(replace_query_param(url, "limit", limit), "offset", offset + limit) if offset + limit < count else None
    previous = None
    if offset > 0:
        previous = replace_query_param(url, "limit", limit)
        previous = replace_query_param(previous, "offset", offset - limit) if offset > limit else remove_query_param(previous, "offset")
    return Response({"count": count, "next": following, "previous": previous, key: render(rows)})

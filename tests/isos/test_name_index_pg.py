"""The index behind a reference by name in other case, on PostgreSQL (the test command's second pass).

`isos.resolve` tries `name__iexact` for every reference that is not an exact name, an id or a path it already
found, and Django writes that as UPPER("name"::text) = UPPER(...). Without an index on exactly that expression
PostgreSQL reads the whole table (13.7 ms for 10,000 ISOs in bench.api_bench's profile).
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.models import Q

from isos.models import IsoImage
from tests.support.factories import IsoImageFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def plan(queryset) -> str:
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # a tiny test table would be scanned anyway
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_a_name_in_other_case_is_found_through_the_upper_name_index():
    IsoImageFactory.create(id="iso-0123456789ab", name="Ubuntu 22.04 Server")
    loose = IsoImage.objects.filter(Q(name__iexact="ubuntu 22.04 server") | Q(name__iexact="ubuntu 22.04 server.iso"))
    assert "iso_name_upper" in plan(loose)
    assert [iso.pk for iso in loose] == ["iso-0123456789ab"]

"""Optional pagination of the list endpoints (ISOs, VMs, templates), inside the spec's envelopes.

Without `limit`/`offset` a list is the spec's `{"<key>": [every row]}`; with either it is one page with
`count`, `next` and `previous` beside the array. The SQL query count of a page is pinned: it must not
grow with the rows on the page (10 vs 200) nor with the table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from isos.models import IsoImage, IsoTag
from tests.support.factories import (
    AdminFactory,
    CdromAttachmentFactory,
    DiskFactory,
    IsoImageFactory,
    IsoTagFactory,
    NetworkInterfaceFactory,
    TemplateDiskFactory,
    TemplateNicFactory,
    VirtualMachineFactory,
    VmTemplateFactory,
)
from vaporsite.pagination import DEFAULT_LIMIT, MAX_LIMIT
from vms.models import CdromAttachment, Disk, NetworkInterface, TemplateDisk, TemplateNic, VirtualMachine, VmTemplate

ISOS = "/api/v1/virtualmachines/isos"
VMS = "/api/v1/virtualmachines/"
TEMPLATES = "/api/v1/virtualmachines/templates"

# Queries for one page, whatever its size: COUNT, the page's rows, then one per prefetched relation.
PAGE_QUERIES = {
    ISOS: 3,  # count, ISOs, their tags
    VMS: 6,  # count, VMs (+ template, joined), disks, NICs, CD-ROMs, their ISOs
    TEMPLATES: 4,  # count, templates (+ ISO joined, VM count annotated), disks, NICs
}
KEYS = {ISOS: "isos", VMS: "virtualmachines", TEMPLATES: "templates"}


@pytest.fixture
def admin_api(db: None) -> APIClient:
    client = APIClient()
    client.force_authenticate(AdminFactory.create())
    return client


# Hundreds of rows per test: the factories build them and bulk_create saves them in a few queries.


def add_isos(count: int, *, start: int = 0, tag: IsoTag | None = None) -> list[IsoImage]:
    isos = IsoImage.objects.bulk_create(
        IsoImageFactory.build(id=f"iso-{n:012x}", name=f"image-{n:04d}.iso", size=n, os_type="linux") for n in range(start, start + count)
    )
    tags = [tag] if tag else [IsoTagFactory.create(name=name) for name in ("one", "two")]
    IsoImage.tags.through.objects.bulk_create(IsoImage.tags.through(isoimage_id=iso.pk, isotag_id=t.pk) for iso in isos for t in tags)
    return isos


def add_vms(count: int, *, start: int = 0) -> None:
    iso = IsoImage.objects.first() or add_isos(1, start=9999)[0]
    template = VmTemplate.objects.first() or VmTemplateFactory.create(name="base")
    vms = VirtualMachine.objects.bulk_create(
        VirtualMachineFactory.build(name=f"vm-{n:04d}", template=template) for n in range(start, start + count)
    )
    Disk.objects.bulk_create(DiskFactory.build(vm=vm, order=order) for vm in vms for order in range(2))
    NetworkInterface.objects.bulk_create(NetworkInterfaceFactory.build(vm=vm) for vm in vms)
    CdromAttachment.objects.bulk_create(CdromAttachmentFactory.build(vm=vm, iso=iso) for vm in vms)


def add_templates(count: int, *, start: int = 0) -> None:
    iso = IsoImage.objects.first() or add_isos(1, start=9999)[0]
    templates = VmTemplate.objects.bulk_create(VmTemplateFactory.build(name=f"tpl-{n:04d}", iso=iso) for n in range(start, start + count))
    TemplateDisk.objects.bulk_create(TemplateDiskFactory.build(template=t) for t in templates)
    TemplateNic.objects.bulk_create(TemplateNicFactory.build(template=t) for t in templates)


ADD: dict[str, Callable[[int], object]] = {ISOS: add_isos, VMS: add_vms, TEMPLATES: add_templates}


def get(client: APIClient, url: str, expected: int = 200) -> dict[str, Any]:
    response = client.get(url)
    assert response.status_code == expected, response.content
    body: dict[str, Any] = response.json()
    return body


def names(body: dict[str, Any], key: str) -> list[str]:
    return [row["name"] for row in body[key]]


# --- shape --------------------------------------------------------------------


@pytest.mark.parametrize("url", [ISOS, VMS, TEMPLATES])
def test_without_limit_or_offset_the_list_is_whole_and_has_the_spec_shape(admin_api, url):
    ADD[url](DEFAULT_LIMIT + 5)
    body = get(admin_api, url)
    assert set(body) == {KEYS[url]}
    assert len(body[KEYS[url]]) == DEFAULT_LIMIT + 5


@pytest.mark.parametrize("url", [ISOS, VMS, TEMPLATES])
def test_pages_follow_next_and_previous_through_the_whole_list_in_name_order(admin_api, url):
    ADD[url](7)
    key = KEYS[url]
    everything = names(get(admin_api, url), key)
    assert everything == sorted(everything) and len(everything) >= 7

    seen: list[str] = []
    link: str | None = f"{url}?limit=3"
    pages = []
    while link:
        body = get(admin_api, link)
        assert set(body) == {"count", "next", "previous", key}
        assert body["count"] == len(everything)
        pages.append(body)
        seen += names(body, key)
        link = body["next"]
    assert seen == everything
    assert [len(p[key]) for p in pages] == [3, 3, len(everything) - 6]
    assert pages[0]["previous"] is None
    assert pages[1]["previous"].endswith(f"{url}?limit=3")  # the first page: no offset
    assert names(get(admin_api, pages[2]["previous"]), key) == names(pages[1], key)


def test_offset_alone_pages_with_the_default_limit(admin_api):
    add_isos(DEFAULT_LIMIT + 30)
    body = get(admin_api, f"{ISOS}?offset=20")
    assert body["count"] == DEFAULT_LIMIT + 30
    assert len(body["isos"]) == DEFAULT_LIMIT
    assert names(body, "isos")[0] == "image-0020.iso"
    assert body["next"].endswith(f"offset={20 + DEFAULT_LIMIT}") and f"limit={DEFAULT_LIMIT}" in body["next"]


def test_an_offset_past_the_end_is_an_empty_page_that_still_counts(admin_api):
    add_isos(4)
    body = get(admin_api, f"{ISOS}?limit=2&offset=10")
    assert body == {"count": 4, "next": None, "previous": "http://testserver/api/v1/virtualmachines/isos?limit=2&offset=8", "isos": []}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        (f"limit={MAX_LIMIT + 1}", "limit"),
        ("limit=ten", "limit"),
        ("limit=-5", "limit"),
        ("limit=1.5", "limit"),
        ("offset=-1", "offset"),
        ("offset=x", "offset"),
    ],
)
@pytest.mark.parametrize("url", [ISOS, VMS, TEMPLATES])
def test_a_bad_limit_or_offset_is_a_400_naming_it(admin_api, url, query, field):
    body = get(admin_api, f"{url}?{query}", expected=400)
    assert body["field"] == field and body["code"] == "invalid"


def test_the_largest_page_is_the_maximum(admin_api):
    add_isos(3)
    assert get(admin_api, f"{ISOS}?limit={MAX_LIMIT}")["count"] == 3


# --- filters --------------------------------------------------------------------


def test_iso_filters_apply_to_the_count_and_stay_in_the_links(admin_api):
    tagged = IsoTagFactory.create(name="lts")
    add_isos(5, start=0, tag=tagged)
    add_isos(5, start=100)  # tagged one and two
    first = get(admin_api, f"{ISOS}?tag=lts&os_type=linux&limit=2")
    assert first["count"] == 5
    assert names(first, "isos") == ["image-0000.iso", "image-0001.iso"]
    assert "tag=lts" in first["next"] and "os_type=linux" in first["next"]
    rest = get(admin_api, first["next"])
    assert names(rest, "isos") == ["image-0002.iso", "image-0003.iso"]
    assert get(admin_api, f"{ISOS}?tag=one&tag=two&limit=100")["count"] == 5
    assert get(admin_api, f"{ISOS}?tag=one&tag=lts&limit=100")["count"] == 0
    search = get(admin_api, f"{ISOS}?search=image-01&offset=0")
    assert search["count"] == 5 and search["next"] is None


def test_an_iso_with_several_matching_tags_is_listed_once(admin_api):
    add_isos(3)  # each has tags one and two
    body = get(admin_api, f"{ISOS}?tag=one&tag=two")
    assert names(body, "isos") == ["image-0000.iso", "image-0001.iso", "image-0002.iso"]


# --- queries --------------------------------------------------------------------


def page_queries(client: APIClient, url: str, rows: int) -> int:
    with CaptureQueriesContext(connection) as captured:
        body = get(client, f"{url}?limit={rows}")
    assert len(body[KEYS[url]]) == rows
    return len(captured.captured_queries)


@pytest.mark.parametrize("url", [ISOS, VMS, TEMPLATES])
def test_a_page_costs_the_same_queries_with_10_or_200_rows(admin_api, url):
    ADD[url](200)
    small, large = page_queries(admin_api, url, 10), page_queries(admin_api, url, 200)
    assert small == large == PAGE_QUERIES[url]
    # The whole list (no limit) saves the COUNT and costs no more for more rows.
    with CaptureQueriesContext(connection) as captured:
        assert len(get(admin_api, url)[KEYS[url]]) >= 200
    assert len(captured.captured_queries) == PAGE_QUERIES[url] - 1

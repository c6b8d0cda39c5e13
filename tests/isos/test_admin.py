"""The ISO library in the Django admin."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from isos.hashing import hash_file
from isos.models import IsoImage, RetiredIsoId
from tests.support.factories import UserFactory, VirtualMachineFactory
from tests.support.isos import make_iso, register_ready

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/isos/isoimage/"


def test_changelist_shows_status_size_usage_and_tags(admin_client, iso_dirs):
    register_ready(make_iso(iso_dirs.search[0] / "a.iso", size_padding=3 * 1024 * 1024), tags=("ubuntu",))
    page = admin_client.get(CHANGELIST).content.decode()
    assert "a.iso" in page and "Ready" in page and "MB" in page and "ubuntu" in page


def test_changelist_query_count_is_flat(admin_client, iso_dirs):
    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(CHANGELIST).status_code == 200
        return len(captured.captured_queries)

    for index in range(2):
        register_ready(make_iso(iso_dirs.search[0] / f"{index}.iso"), tags=(f"t{index}",))
    few = count()
    for index in range(2, 10):
        register_ready(make_iso(iso_dirs.search[0] / f"{index}.iso"), tags=(f"t{index}",))
    assert count() == few


def test_download_in_progress_shows_a_progress_bar_and_refreshes(admin_client, iso_dirs):
    iso = register_ready(make_iso(iso_dirs.search[0] / "a.iso"))
    IsoImage.objects.filter(pk=iso.pk).update(status="downloading", bytes_done=50, bytes_total=200)
    page = admin_client.get(CHANGELIST).content.decode()
    assert '<progress max="100" value="25.0"' in page
    assert 'http-equiv="refresh"' in page


def test_add_form_registers_a_path_through_the_service(admin_client, iso_dirs, run_tasks):
    path = make_iso(iso_dirs.search[0] / "win.iso", label="CCCOMA_X64FRE_EN-US_DV9")
    with run_tasks():
        response = admin_client.post(
            "/admin/isos/isoimage/add/", {"path": str(path), "tag_names": "windows, install", "os_variant": "win11"}
        )
    assert response.status_code == 302, response.content.decode()[:2000]
    iso = IsoImage.objects.get()
    assert (iso.path, iso.os_type, iso.os_variant, iso.status) == (str(path), "windows", "win11", "ready")
    assert sorted(t.name for t in iso.tags.all()) == ["install", "windows"]


def test_add_form_shows_the_service_error_on_the_field(admin_client, iso_dirs):
    response = admin_client.post("/admin/isos/isoimage/add/", {"path": "/etc/passwd"})
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert "outside the allowed directories" in form.errors["path"][0]
    assert not IsoImage.objects.exists()


def test_add_form_needs_exactly_one_source(admin_client, iso_dirs):
    response = admin_client.post("/admin/isos/isoimage/add/", {})
    assert "Give either a path or a URL." in response.content.decode()


def test_change_form_edits_metadata_and_keeps_hashes_read_only(admin_client, iso_dirs):
    iso = register_ready(make_iso(iso_dirs.search[0] / "a.iso"))
    url = f"/admin/isos/isoimage/{iso.pk}/change/"
    page = admin_client.get(url).content.decode()
    assert iso.sha256_hash in page and 'name="sha256_hash"' not in page
    response = admin_client.post(
        url, {"name": "renamed", "os_type": "linux", "os_variant": "debian11", "architecture": "", "description": ""}
    )
    assert response.status_code == 302
    iso.refresh_from_db()
    assert (iso.name, iso.os_variant) == ("renamed", "debian11")
    bad = admin_client.post(url, {"name": "renamed", "os_variant": "debian1", "os_type": "", "architecture": "", "description": ""})
    assert "is not an osinfo-db short id" in bad.content.decode()


def test_rehash_action(admin_client, iso_dirs, run_tasks):
    path = make_iso(iso_dirs.search[0] / "a.iso")
    iso = register_ready(path)
    IsoImage.objects.filter(pk=iso.pk).update(sha256_hash="0" * 64)
    with run_tasks():
        response = admin_client.post(CHANGELIST, {"action": "action_iso_rehash", "_selected_action": [iso.pk]}, follow=True)
    assert "Re-hashing: 1 ISO(s)." in response.content.decode()
    iso.refresh_from_db()
    assert iso.sha256_hash == hash_file(path).sha256


def test_cancel_action_reports_isos_that_are_not_downloading(admin_client, iso_dirs):
    iso = register_ready(make_iso(iso_dirs.search[0] / "a.iso"))
    response = admin_client.post(CHANGELIST, {"action": "action_iso_cancel", "_selected_action": [iso.pk]}, follow=True)
    assert "not downloading: nothing to cancel" in response.content.decode()


def test_view_only_staff_cannot_add(client, db):
    client.force_login(UserFactory.create(is_staff=True, permissions=["view_isoimage"]))
    assert client.get(CHANGELIST).status_code == 200
    assert client.get("/admin/isos/isoimage/add/").status_code == 403


# --- delete: through isos.services.iso_delete, as the API ---------------------


def _delete_on_page(admin_client, iso: IsoImage):
    return admin_client.post(f"/admin/isos/isoimage/{iso.pk}/delete/", {"post": "yes"}, follow=True)


def _delete_selected(admin_client, iso: IsoImage):
    return admin_client.post(CHANGELIST, {"action": "delete_selected", "_selected_action": [iso.pk], "post": "yes"}, follow=True)


DELETES = pytest.mark.parametrize("delete", [_delete_on_page, _delete_selected], ids=["delete page", "delete selected"])


@DELETES
def test_delete_retires_the_id_and_keeps_a_registered_file(admin_client, iso_dirs, delete):
    path = make_iso(iso_dirs.search[0] / "a.iso")
    iso = register_ready(path)
    assert delete(admin_client, iso).status_code == 200
    assert not IsoImage.objects.filter(pk=iso.pk).exists()
    assert RetiredIsoId.objects.filter(pk=iso.pk, file_deleted=False).exists()
    assert path.exists()


@DELETES
def test_delete_removes_a_downloaded_file(admin_client, iso_dirs, delete):
    path = make_iso(iso_dirs.download / "fetched.iso")
    iso = register_ready(path)
    IsoImage.objects.filter(pk=iso.pk).update(downloaded=True)
    iso.refresh_from_db()
    assert delete(admin_client, iso).status_code == 200
    assert RetiredIsoId.objects.filter(pk=iso.pk, file_deleted=True).exists()
    assert not path.exists()


@DELETES
def test_delete_of_an_iso_in_use_is_refused_naming_the_vm(admin_client, iso_dirs, delete):
    iso = register_ready(make_iso(iso_dirs.search[0] / "a.iso"))
    VirtualMachineFactory.create(name="web-1", cdrom=iso)
    page = delete(admin_client, iso).content.decode()
    assert "is attached to 1 VM(s): web-1" in page
    assert IsoImage.objects.filter(pk=iso.pk).exists()
    assert not RetiredIsoId.objects.filter(pk=iso.pk).exists()

"""The admin's upload page (issue 14, point 5): reachable from the list and the add page, for those who may add."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

UPLOAD = "/admin/isos/isoimage/upload/"

pytestmark = pytest.mark.django_db


def test_the_list_and_the_add_page_lead_to_the_upload_page(admin_client, iso_dirs):
    assert f'href="{UPLOAD}"' in admin_client.get("/admin/isos/isoimage/").content.decode()
    assert f'href="{UPLOAD}"' in admin_client.get("/admin/isos/isoimage/add/").content.decode()


def test_the_upload_page_carries_what_the_script_needs(admin_client, iso_dirs):
    page = admin_client.get(UPLOAD).content.decode()
    assert "<title>Upload an ISO image" in page
    assert 'data-create-url="/api/v1/virtualmachines/isos/uploads"' in page
    assert 'data-change-url="/admin/isos/isoimage/ISO_ID/change/"' in page
    assert f'data-chunk-bytes="{8 * 1024 * 1024}"' in page
    assert 'name="csrfmiddlewaretoken"' in page
    assert "isos/upload.js" in page
    assert str(iso_dirs.download) in page


def test_the_upload_page_needs_the_add_permission(client: Client, iso_dirs):
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_isoimage"))
    client.force_login(viewer)
    assert client.get(UPLOAD).status_code == 403
    assert UPLOAD not in client.get("/admin/isos/isoimage/").content.decode()

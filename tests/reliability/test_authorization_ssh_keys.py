"""The authorization matrix of the profile's SSH keys (API and admin): every signed-in user manages their own keys,
and nobody, not even a superuser, reaches another user's: 404 in the API, "does not exist" in the admin, nothing changed."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from tests.reliability.authz import make_role, record_allowed
from tests.reliability.conftest import Tally
from tests.support.sshkeys import ed25519_key, fingerprint
from vms.cloud_init_models import SshPublicKey

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]

SUITE = "authorization"
ROLES = ("anonymous", "viewer", "operator", "admin")
KEYS = "/api/v1/profile/ssh-keys"
ADMIN = "/admin/vms/sshpublickey/"


def _key(user: User, name: str) -> SshPublicKey:
    line = ed25519_key(name)
    return SshPublicKey.objects.create(user=user, name=name, key=line, fingerprint=fingerprint(line))


@pytest.fixture
def cast(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The role's user with a key of its own, and another user's key."""
    role = request.node.callspec.params["role"]
    user = make_role(role)
    owner = User.objects.create_user("key-owner", password=None, is_staff=True)
    theirs = _key(owner, "owners-key")
    mine = _key(user, "my-key") if user is not None else None
    return {"user": user, "mine": mine, "theirs": theirs}


def _api(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def _admin(user: User | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def _rows() -> list[tuple[int, int, str]]:
    return sorted(SshPublicKey.objects.values_list("pk", "user_id", "fingerprint"))


@pytest.mark.parametrize("role", ROLES)
def test_another_users_key_is_out_of_reach(role: str, cast: dict[str, Any], tally: Tally) -> None:
    user, theirs = cast["user"], cast["theirs"]
    before = _rows()
    api, admin = _api(user), _admin(user)
    listed = api.get(KEYS)
    deleted = api.delete(f"{KEYS}/{theirs.pk}")
    page = admin.get(f"{ADMIN}{theirs.pk}/change/")
    admin_delete = admin.post(f"{ADMIN}{theirs.pk}/delete/", {"post": "yes"})
    admin_list = admin.get(ADMIN)
    bulk = admin.post(ADMIN, {"action": "delete_selected", "_selected_action": str(theirs.pk), "post": "yes"})
    after = _rows()
    if user is None:
        refused = listed.status_code == 401 and deleted.status_code == 401
        to_login = [r.status_code == 302 and r["Location"].startswith("/admin/login/") for r in (page, admin_delete, admin_list)]
        refused = refused and all(to_login)
    else:
        refused = (
            listed.status_code == 200
            and theirs.fingerprint not in listed.content.decode()
            and deleted.status_code == 404
            and page.status_code == 302
            and page["Location"] == "/admin/"
            and admin_delete.status_code == 302
            and admin_list.status_code == 200
            and "owners-key" not in admin_list.content.decode()
            and bulk.status_code in (200, 302)
        )
    leftovers = 0 if after == before else 1
    tally.record(SUITE, f"{role} x another user's SSH key (API list/delete, admin page/delete/bulk)", refused=refused, leftovers=leftovers)
    assert refused and leftovers == 0, (role, listed.status_code, deleted.status_code, page.status_code, admin_delete.status_code)


@pytest.mark.parametrize("role", ROLES)
def test_own_keys_are_listed_added_and_deleted(role: str, cast: dict[str, Any], tally: Tally) -> None:
    user, mine = cast["user"], cast["mine"]
    api, admin = _api(user), _admin(user)
    new = ed25519_key("new")
    created = api.post(KEYS, {"name": "new-key", "key": new}, format="json")
    if user is None:
        denied = (
            created.status_code == 401
            and api.get(KEYS).status_code == 401
            and admin.get(f"{ADMIN}add/").status_code == 302
            and not SshPublicKey.objects.filter(name="new-key").exists()
        )
        tally.record(SUITE, "anonymous x own SSH keys (API list/add, admin add)", refused=denied)
        assert denied
        return
    assert created.status_code == 201, created.content
    assert created.json()["fingerprint"] == fingerprint(new)
    row = SshPublicKey.objects.get(name="new-key")
    assert row.user_id == user.pk
    assert [k["name"] for k in api.get(KEYS).json()] == ["my-key", "new-key"]
    assert api.delete(f"{KEYS}/{row.pk}").status_code == 204
    added = admin.post(f"{ADMIN}add/", {"name": "from-admin", "key": ed25519_key("admin")})
    assert added.status_code == 302, added.content[:500]
    assert SshPublicKey.objects.get(name="from-admin").user_id == user.pk
    assert "my-key" in admin.get(f"{ADMIN}{mine.pk}/change/").content.decode()
    assert admin.post(f"{ADMIN}{mine.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not SshPublicKey.objects.filter(pk=mine.pk).exists()
    record_allowed(tally, SUITE, f"{role} x own SSH keys (API list/add/delete, admin add/page/delete)", effect=True, detail="done")


def test_key_errors_name_the_field_and_a_duplicate_is_a_409(vm_api: APIClient) -> None:
    bad = vm_api.post(KEYS, {"name": "bad", "key": "ssh-rsa AAAA"}, format="json")
    assert bad.status_code == 400 and bad.json()["field"] == "key"
    line = ed25519_key()
    assert vm_api.post(KEYS, {"name": "a", "key": line}, format="json").status_code == 201
    again = vm_api.post(KEYS, {"name": "b", "key": line}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "key_exists"
    same_name = vm_api.post(KEYS, {"name": "a", "key": ed25519_key()}, format="json")
    assert same_name.status_code == 409 and same_name.json()["field"] == "name"
    admin_bad = Client()
    admin_bad.force_login(User.objects.create_user("staff-x", password=None, is_staff=True))
    page = admin_bad.post(f"{ADMIN}add/", {"name": "x", "key": "ssh-ed25519 AAAA"})
    assert page.status_code == 200 and "not an OpenSSH ssh-ed25519 public key" in page.content.decode()
    assert SshPublicKey.objects.count() == 1

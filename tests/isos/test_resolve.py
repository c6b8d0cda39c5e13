"""`iso_resolve`: the spec's four reference kinds, in order, and its errors."""

from __future__ import annotations

import pytest

from isos.models import IsoImage
from isos.resolve import iso_resolve, iso_resolve_ready
from isos.services import IsoMetadata, iso_delete, iso_record_use, iso_register_path
from tests.support.isos import make_iso, register_ready
from vaporsite.errors import Conflict, InvalidInput, NotFound

pytestmark = pytest.mark.django_db


def test_by_id(iso_dirs):
    iso = register_ready(make_iso(iso_dirs.search[0] / "a.iso"))
    assert (iso_resolve(iso.pk).iso, iso_resolve(iso.pk).rule) == (iso, "id")


def test_by_exact_name_then_loose_name(iso_dirs):
    iso = register_ready(make_iso(iso_dirs.search[0] / "a.iso"), name="ubuntu-22.04")
    assert iso_resolve("ubuntu-22.04").rule == "name"
    assert iso_resolve("Ubuntu-22.04.iso").iso == iso


def test_loose_name_matching_two_isos_is_ambiguous(iso_dirs):
    register_ready(make_iso(iso_dirs.search[0] / "a.iso"), name="win11")
    register_ready(make_iso(iso_dirs.search[0] / "b.iso"), name="WIN11.iso")
    with pytest.raises(Conflict) as caught:
        iso_resolve("Win11", field="secondary_iso")
    assert caught.value.field == "secondary_iso" and caught.value.code == "iso_ambiguous"


def test_by_absolute_path_of_a_library_entry_and_through_a_symlink(iso_dirs):
    iso = register_ready(make_iso(iso_dirs.search[1] / "a.iso"))
    assert (iso_resolve(iso.path).iso, iso_resolve(iso.path).rule) == (iso, "path")
    link = iso_dirs.extra_root / "link.iso"
    link.symlink_to(iso.path)
    assert iso_resolve(str(link)).iso == iso


def test_unregistered_absolute_path_is_registered_on_the_way(iso_dirs, run_tasks):
    path = make_iso(iso_dirs.extra_root / "new.iso", label="Fedora-S-dvd-x86_64-36")
    with run_tasks():
        resolved = iso_resolve(str(path))
    assert resolved.registered and resolved.rule == "path"
    iso = IsoImage.objects.get(pk=resolved.iso.pk)
    assert (iso.path, iso.status, iso.name) == (str(path), "ready", "new.iso")


def test_bare_filename_is_found_in_the_search_dirs(iso_dirs, run_tasks):
    path = make_iso(iso_dirs.search[2] / "virtio-win.iso")
    with run_tasks():
        resolved = iso_resolve("virtio-win.iso")
    assert (resolved.rule, resolved.registered, resolved.iso.path) == ("filename", True, str(path))
    again = iso_resolve("virtio-win.iso")  # now the library entry's name matches first
    assert (again.rule, again.registered, again.iso) == ("name", False, resolved.iso)


def test_bare_filename_of_a_library_file_outside_the_search_dirs(iso_dirs):
    iso = register_ready(make_iso(iso_dirs.extra_root / "only-here.iso"), name="something")
    assert iso_resolve("only-here.iso").iso == iso


def test_same_filename_in_two_search_dirs_is_ambiguous(iso_dirs):
    make_iso(iso_dirs.search[0] / "dup.iso", label="ONE")
    make_iso(iso_dirs.search[1] / "dup.iso", label="TWO")
    with pytest.raises(Conflict) as caught:
        iso_resolve("dup.iso")
    assert str(iso_dirs.search[0]) in caught.value.message and str(iso_dirs.search[1]) in caught.value.message
    assert not IsoImage.objects.exists()


def test_same_file_seen_twice_through_a_symlink_is_not_ambiguous(iso_dirs, run_tasks):
    real = make_iso(iso_dirs.search[0] / "one.iso")
    (iso_dirs.search[1] / "one.iso").symlink_to(real)
    with run_tasks():
        assert iso_resolve("one.iso").iso.path == str(real)


@pytest.mark.parametrize("ref", ["nothing.iso", "iso-0123456789ab", "no-such-name"])
def test_missing_is_not_found(iso_dirs, ref):
    with pytest.raises(NotFound) as caught:
        iso_resolve(ref)
    assert caught.value.field == "iso_path"


def test_missing_absolute_path_inside_the_roots_is_not_found(iso_dirs):
    with pytest.raises(NotFound):
        iso_resolve(str(iso_dirs.search[0] / "missing.iso"))


def test_path_outside_the_roots_is_refused(iso_dirs):
    outside = make_iso(iso_dirs.outside / "x.iso")
    with pytest.raises(InvalidInput):
        iso_resolve(str(outside))
    with pytest.raises(InvalidInput):
        iso_resolve("sub/dir.iso")


def test_deleted_id_says_so(iso_dirs):
    iso = register_ready(make_iso(iso_dirs.search[0] / "a.iso"))
    iso_id = iso.pk
    iso_delete(iso=iso)
    with pytest.raises(NotFound, match="was deleted"):
        iso_resolve(iso_id)


def test_only_ready_isos_can_be_attached(iso_dirs):
    iso = iso_register_path(path=str(make_iso(iso_dirs.search[0] / "a.iso")), meta=IsoMetadata())  # hashing, task not run
    with pytest.raises(Conflict) as caught:
        iso_resolve_ready(iso.pk)
    assert caught.value.code == "iso_not_ready" and "hashing" in caught.value.message


def test_record_use_counts_and_stamps(iso_dirs):
    iso = register_ready(make_iso(iso_dirs.search[0] / "a.iso"))
    iso_record_use(iso=iso)
    iso_record_use(iso=iso)
    iso.refresh_from_db()
    assert iso.use_count == 2 and iso.last_used is not None

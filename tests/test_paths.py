"""The one absolute-path check every user path passes first (ISO files, disk images, clone sources)."""

from __future__ import annotations

import pytest

from vaporsite.errors import InvalidInput
from vaporsite.paths import absolute_path, guard_file
from vms.hypervisor.images import image_info


@pytest.mark.parametrize(
    ("raw", "message", "code"),
    [
        ("", "must be a non-empty absolute path", "invalid"),
        (None, "must be a non-empty absolute path", "invalid"),
        ("/images/a\x00.qcow2", "must not contain NUL bytes", "invalid"),
        ("a\x00b", "must not contain NUL bytes", "invalid"),
        ("images/a.qcow2", "'images/a.qcow2' is not an absolute path", "invalid"),
        ('json:{"file.filename":"/etc/passwd"}', "is not an absolute path", "invalid"),
    ],
)
def test_refuses_what_is_not_a_plain_absolute_path(raw, message, code) -> None:
    with pytest.raises(InvalidInput) as caught:
        absolute_path(raw, field="disks.0.path")
    assert message in caught.value.message and (caught.value.code, caught.value.field) == (code, "disks.0.path")


def test_a_relative_path_gets_the_callers_code_and_note() -> None:
    with pytest.raises(InvalidInput) as caught:
        absolute_path("nbd:host:1", field="path", code="path_not_absolute", note=" (protocol names are refused)")
    assert caught.value.message == "'nbd:host:1' is not an absolute path (protocol names are refused)"
    assert caught.value.code == "path_not_absolute"


def test_an_absolute_path_is_returned_as_given() -> None:
    assert absolute_path("/images/../a.qcow2", field="path") == "/images/../a.qcow2"


def test_the_guards_ask_it_first(tmp_path) -> None:
    with pytest.raises(InvalidInput, match="is not an absolute path") as caught:
        guard_file("x.iso", roots=[tmp_path], field="path")
    assert caught.value.code == "path_not_absolute"
    with pytest.raises(InvalidInput, match="must not contain NUL bytes"):
        image_info("/images/a\x00.qcow2", "qcow2", field="clone_from")

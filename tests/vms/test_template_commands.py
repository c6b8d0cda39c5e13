"""import_templates / export_templates against the in-memory hypervisor."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError

from isos.models import IsoImage
from isos.services import IsoMetadata, iso_register_path
from tests.support.isos import make_iso
from vaporsite.errors import Conflict
from vms.api.template_serializers import TemplateSerializer
from vms.models import TemplateDisk, TemplateNic, VmTemplate
from vms.services.templates import TemplateData, template_create, template_data, template_delete

pytestmark = pytest.mark.django_db
SAMPLE = Path(__file__).resolve().parents[2] / "docs" / "templates.example.yaml"


@pytest.fixture
def iso(iso_dirs) -> IsoImage:
    iso = iso_register_path(path=str(make_iso(iso_dirs.search[0] / "ubuntu-22.04.iso")), meta=IsoMetadata(), digests=None)
    IsoImage.objects.filter(pk=iso.pk).update(status="ready")
    return iso


def ubuntu_payload(base_image: Path, name: str = "ubuntu-22.04") -> dict:
    return {
        "name": name, "description": "Ubuntu server\nwith cloud-init", "memory": 2048, "vcpus": 2,
        "os_variant": "ubuntu22.04", "uefi": True, "tpm": True, "graphics_type": "spice", "iso": "ubuntu-22.04.iso",
        "disks": [{"clone_from": str(base_image), "size": 20, "boot_order": 1}, {"size": 50, "bus": "sata", "format": "raw"}],
        "networks": [{"type": "nat", "source": "default"}, {"type": "bridge", "source": "br0", "model": "e1000e"}],
    }  # fmt: skip


WINDOWS = {
    "name": "windows-11", "memory": 8192, "vcpus": 4, "os_variant": "win11", "uefi": True, "secure_boot": True, "tpm": True,
    "storage_pool": "fast", "disks": [{"size": 64, "bus": "sata", "boot_order": 1}], "networks": [{"model": "e1000e"}],
}  # fmt: skip


def make(payload: dict, hv) -> VmTemplate:
    serializer = TemplateSerializer(data=payload)
    serializer.is_valid(raise_exception=True)
    return template_create(data=serializer.to_data(), hv=hv)


@pytest.fixture
def templates(hv, base_image, iso) -> dict[str, TemplateData]:
    """Two stored templates, by name, in their portable form."""
    made = [make(ubuntu_payload(base_image), hv), make(WINDOWS, hv)]
    return {t.name: template_data(t) for t in made}


def run(command: str, *args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(command, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def stored() -> dict[str, TemplateData]:
    return {t.name: template_data(t) for t in VmTemplate.objects.all()}


def snapshot() -> tuple:
    """Everything an import could write."""
    return (
        sorted(VmTemplate.objects.values_list("pk", "name", "memory_mb", "updated_at")),
        sorted(TemplateDisk.objects.values_list("pk", flat=True)),
        sorted(TemplateNic.objects.values_list("pk", flat=True)),
        sorted(IsoImage.objects.values_list("pk", flat=True)),
    )


def write(path: Path, entries: object) -> Path:
    path.write_text(yaml.safe_dump(entries) if path.suffix in (".yaml", ".yml") else json.dumps(entries))
    return path


# --- the round trip -------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_export_then_import_recreates_the_same_templates(templates, tmp_path, suffix):
    file = tmp_path / f"templates{suffix}"
    run("export_templates", str(file))
    for template in VmTemplate.objects.all():
        template_delete(template=template)
    assert not VmTemplate.objects.exists()

    out, _ = run("import_templates", str(file))

    assert stored() == templates
    assert stored()["ubuntu-22.04"].iso == "ubuntu-22.04.iso" and stored()["ubuntu-22.04"].disks[0].size == 20
    assert out.splitlines() == ["created ubuntu-22.04", "created windows-11", "created 2, updated 0, unchanged 0"]


def test_export_writes_the_portable_form_sorted_by_name(templates, base_image):
    out, _ = run("export_templates")
    document = yaml.safe_load(out)
    assert [t["name"] for t in document["templates"]] == ["ubuntu-22.04", "windows-11"]
    ubuntu = document["templates"][0]
    assert ubuntu["iso"] == "ubuntu-22.04.iso"  # the ISO by name, not by id
    assert ubuntu["os_type"] == "linux"
    clone = {"size": 20, "clone_from": str(base_image), "linked": False, "format": "qcow2", "bus": "virtio", "boot_order": 1}
    assert ubuntu["disks"][0] == clone
    assert ubuntu["networks"][1] == {"type": "bridge", "source": "br0", "model": "e1000e"}
    assert set(ubuntu) == set(TemplateSerializer().fields)  # exactly the API's input shape


def test_export_json_of_named_templates_to_stdout(templates):
    out, _ = run("export_templates", "-", "windows-11", "--format", "json")
    document = json.loads(out)
    assert [t["name"] for t in document["templates"]] == ["windows-11"]
    assert (document["templates"][0]["secure_boot"], document["templates"][0]["iso"]) == (True, None)


def test_export_unknown_name_is_an_error(templates, tmp_path):
    with pytest.raises(CommandError, match="no template named debian-13"):
        run("export_templates", str(tmp_path / "t.yaml"), "ubuntu-22.04", "debian-13")
    assert not (tmp_path / "t.yaml").exists()


def test_export_refuses_a_file_name_without_a_known_extension(templates, tmp_path):
    with pytest.raises(CommandError, match="must end in .yaml, .yml or .json"):
        run("export_templates", "ubuntu-22.04")


# --- idempotence and updates -----------------------------------------------------------------


def test_reimport_reports_unchanged_and_writes_nothing(templates, tmp_path):
    file = tmp_path / "templates.yml"
    run("export_templates", str(file))
    before = snapshot()

    out, _ = run("import_templates", str(file))

    assert out.splitlines() == ["unchanged ubuntu-22.04", "unchanged windows-11", "created 0, updated 0, unchanged 2"]
    assert snapshot() == before  # same rows, same updated_at


def test_reimport_of_the_api_input_is_unchanged_too(templates, base_image, tmp_path):
    """os_type left out (derived from the variant) and the ISO by file name still compare equal."""
    file = write(tmp_path / "in.json", [ubuntu_payload(base_image), WINDOWS])
    before = snapshot()
    out, _ = run("import_templates", str(file))
    assert out.splitlines()[-1] == "created 0, updated 0, unchanged 2"
    assert snapshot() == before


def test_changed_entry_is_updated_and_the_others_are_not(templates, tmp_path):
    file = tmp_path / "templates.yaml"
    run("export_templates", str(file))
    document = yaml.safe_load(file.read_text())
    document["templates"][1]["memory"] = 16384
    document["templates"][1]["disks"].append({"size": 100})
    write(file, document)
    ubuntu_rows = list(TemplateDisk.objects.filter(template__name="ubuntu-22.04").values_list("pk", flat=True))

    out, _ = run("import_templates", str(file))

    assert out.splitlines() == ["unchanged ubuntu-22.04", "updated windows-11 (memory, disks)", "created 0, updated 1, unchanged 1"]
    windows = stored()["windows-11"]
    assert windows.memory == 16384 and [d.size for d in windows.disks] == [64, 100]
    assert list(TemplateDisk.objects.filter(template__name="ubuntu-22.04").values_list("pk", flat=True)) == ubuntu_rows


def test_dry_run_reports_and_writes_nothing(templates, base_image, tmp_path):
    changed = {**WINDOWS, "vcpus": 8}
    file = write(tmp_path / "t.yaml", {"templates": [ubuntu_payload(base_image, "ubuntu-copy"), changed, ubuntu_payload(base_image)]})
    before = snapshot()

    out, _ = run("import_templates", str(file), "--dry-run")

    assert out.splitlines() == [
        "would create ubuntu-copy",
        "would update windows-11 (vcpus)",
        "unchanged ubuntu-22.04",
        "would create 1, would update 1, unchanged 1; nothing written (dry run)",
    ]
    assert snapshot() == before


def test_an_iso_file_not_in_the_library_is_registered_by_the_import_only(hv, iso_dirs, tmp_path):
    path = make_iso(iso_dirs.search[0] / "debian-13.iso")
    file = write(tmp_path / "t.yaml", [{"name": "debian", "iso": str(path)}])

    out, _ = run("import_templates", str(file), "--dry-run")
    assert out.splitlines()[0] == "would create debian"
    assert not IsoImage.objects.exists() and not VmTemplate.objects.exists()

    out, _ = run("import_templates", str(file))
    assert out.splitlines()[0] == "created debian"
    assert IsoImage.objects.get().path == str(path) and stored()["debian"].iso == "debian-13.iso"
    out, _ = run("import_templates", str(file))
    assert out.splitlines()[0] == "unchanged debian"


def test_an_iso_file_is_not_registered_when_another_entry_is_refused(hv, iso_dirs, tmp_path):
    path = make_iso(iso_dirs.search[0] / "debian-13.iso")
    file = write(tmp_path / "t.yaml", [{"name": "debian", "iso": str(path)}, {"name": "bad", "vcpus": 0}])
    with pytest.raises(CommandError, match="1 of 2"):
        run("import_templates", str(file))
    assert not IsoImage.objects.exists() and not VmTemplate.objects.exists()


# --- refusals ---------------------------------------------------------------------------------


def test_an_invalid_entry_among_valid_ones_writes_nothing(templates, base_image, tmp_path):
    entries = [
        {"name": "fresh", "disks": [{"size": 10}]},
        {"name": "ubuntu-22.04", "disks": [{"clone_from": "/etc/hostname"}]},  # outside the disk roots
        {**WINDOWS, "memory": 4096},
    ]
    file = write(tmp_path / "t.json", entries)
    before = snapshot()
    err = io.StringIO()

    with pytest.raises(CommandError, match="1 of 3 template\\(s\\) are invalid; nothing was written"):
        call_command("import_templates", str(file), stdout=io.StringIO(), stderr=err)

    assert err.getvalue().startswith("error templates[1] (ubuntu-22.04): disks.0.clone_from: ")
    assert "/etc/hostname" in err.getvalue() and "is outside the allowed directories" in err.getvalue()
    assert snapshot() == before and not VmTemplate.objects.filter(name="fresh").exists()


def test_every_bad_entry_is_named_with_the_apis_messages(hv, disk_root, tmp_path):
    entries = [
        {"name": "a", "colour": "blue", "disks": [{"sise": 10}]},  # the API too stops at the unknown top-level field
        "not-a-template",
        {"name": "c", "memory": "lots", "secure_boot": True},
        {"name": "d", "secure_boot": True},
        {"name": "e", "disks": [{"size": 1}, {"sise": 10}]},
        {"name": "a"},
    ]
    file = write(tmp_path / "t.yaml", entries)
    err = io.StringIO()
    with pytest.raises(CommandError, match="5 of 6"):
        call_command("import_templates", str(file), stdout=io.StringIO(), stderr=err)
    lines = err.getvalue().splitlines()
    assert lines[0] == "error templates[0] (a): colour: unknown field"
    assert lines[1] == "error templates[1]: must be a mapping of template fields, not a string"
    assert lines[2] == "error templates[2] (c): memory: A valid integer is required."
    assert lines[3].startswith("error templates[3] (d): secure_boot: ")
    assert lines[4] == "error templates[4] (e): disks.1.sise: unknown field"
    assert len(lines) == 5  # templates[5] is fine on its own (its twin templates[0] is already refused)
    assert not VmTemplate.objects.exists()


def test_the_same_name_twice_is_an_error(hv, tmp_path):
    file = write(tmp_path / "t.yaml", [{"name": "a"}, {"name": "a", "vcpus": 4}])
    err = io.StringIO()
    with pytest.raises(CommandError, match="1 of 2"):
        call_command("import_templates", str(file), stdout=io.StringIO(), stderr=err)
    assert "error templates[1] (a): name: 'a' is also given by templates[0] (a)" in err.getvalue()
    assert not VmTemplate.objects.exists()


def test_a_failure_while_writing_undoes_the_earlier_writes(hv, tmp_path, monkeypatch):
    from vms.management.commands import import_templates

    def create(*, data: TemplateData, hv=None) -> VmTemplate:
        if data.name == "b":
            raise Conflict("a template named 'b' already exists", field="name")
        return template_create(data=data, hv=hv)

    monkeypatch.setattr(import_templates, "template_create", create)
    file = write(tmp_path / "t.yaml", [{"name": "a"}, {"name": "b"}])
    with pytest.raises(CommandError, match=r"templates\[1\] \(b\): name: a template named 'b' already exists; nothing was written"):
        run("import_templates", str(file))
    assert not VmTemplate.objects.exists()


def test_malformed_yaml_is_a_clear_error(hv, tmp_path):
    file = tmp_path / "t.yaml"
    file.write_text("templates:\n  - name: a\n    disks: [ {size: 10}\n")
    with pytest.raises(CommandError, match=r"(?s)t\.yaml is not valid YAML: .*t\.yaml\", line 3, column 12") as info:
        run("import_templates", str(file))
    assert "while parsing a flow sequence" in str(info.value)
    assert not VmTemplate.objects.exists()


def test_malformed_json_is_a_clear_error(hv, tmp_path):
    file = tmp_path / "t.json"
    file.write_text('[{"name": "a",}]')
    with pytest.raises(CommandError, match=r"t\.json is not valid JSON: .*line 1 column 15"):
        run("import_templates", str(file))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no templates"),
        ("name: a\n", "unknown top-level key\\(s\\) name"),
        ("templates: {name: a}\n", "expected a list of templates, not a mapping"),
        ("just words\n", "expected a list of templates, not a string"),
    ],
)
def test_a_file_of_the_wrong_shape_is_refused(hv, tmp_path, text, message):
    file = tmp_path / "t.yaml"
    file.write_text(text)
    with pytest.raises(CommandError, match=message):
        run("import_templates", str(file))


def test_a_missing_file_is_an_error(hv, tmp_path):
    with pytest.raises(CommandError, match="cannot read .*nope.yaml"):
        run("import_templates", str(tmp_path / "nope.yaml"))


def test_python_tags_are_not_loaded(hv, tmp_path):
    file = tmp_path / "t.yaml"
    file.write_text("- !!python/object/apply:os.system ['true']\n")
    with pytest.raises(CommandError, match="not valid YAML"):
        run("import_templates", str(file))


@pytest.mark.parametrize(
    "text", ['{"templates": [{"name": "from-stdin", "vcpus": 3}]}', "templates:\n- name: from-stdin\n  vcpus: 3\n"], ids=["json", "yaml"]
)
def test_stdin_is_read_in_either_format(hv, monkeypatch, text):
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    out, _ = run("import_templates", "-")
    assert out.splitlines()[0] == "created from-stdin"
    assert VmTemplate.objects.get().vcpus == 3


def test_the_example_file_imports(hv, base_image, iso_dirs, tmp_path):
    """docs/templates.example.yaml, its clone sources pointed at this test's base image and its ISOs registered."""
    document = yaml.safe_load(SAMPLE.read_text())
    names = [t["name"] for t in document["templates"]]
    for template in document["templates"]:
        if template.get("iso"):
            iso_register_path(path=str(make_iso(iso_dirs.search[0] / template["iso"])), meta=IsoMetadata(), digests=None)
        for disk in template.get("disks", []):
            if "clone_from" in disk:
                disk["clone_from"] = str(base_image)
    file = write(tmp_path / "example.yaml", document)
    out, _ = run("import_templates", str(file))
    assert out.splitlines()[:-1] == [f"created {name}" for name in names]
    assert {"ubuntu-22.04", "windows-11"} <= set(names)
    windows = stored()["windows-11"]
    assert (windows.uefi, windows.secure_boot, windows.tpm) == (True, True, True)
    assert {d.bus for d in windows.disks} == {"sata"}

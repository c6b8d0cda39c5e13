"""`manage.py import_templates FILE [--dry-run]`: load VM templates from a YAML or JSON file.

The file holds a list of templates, or a mapping ``{"templates": [...]}``;
each entry has the shape the template API takes (TemplateSerializer), so the
output of `export_templates` imports as it is. ``-`` reads standard input.

Idempotent, by name: a template that does not exist is created, one that
differs is replaced with the entry (template_update), one whose portable form
already equals the entry is left alone. All or nothing: every entry is
checked first, and if any is wrong nothing is written.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from vaporsite.errors import VaporError
from vms import hypervisor
from vms.api.template_serializers import TemplateSerializer, template_out
from vms.hypervisor import Hypervisor
from vms.models import VmTemplate
from vms.services.templates import TemplateData, stored_os_type, template_create, template_data, template_update, template_validate

CREATE, UPDATE, UNCHANGED = "create", "update", "unchanged"
DONE = {CREATE: "created", UPDATE: "updated", UNCHANGED: "unchanged"}
WOULD = {CREATE: "would create", UPDATE: "would update", UNCHANGED: "unchanged"}


@dataclass
class Entry:
    label: str  # templates[1] (ubuntu-22.04)
    data: TemplateData | None = None
    errors: list[str] = dataclasses.field(default_factory=list)
    action: str = ""
    changed: tuple[str, ...] = ()  # fields an update changes
    existing: VmTemplate | None = None


class Command(BaseCommand):
    help = "Create or update VM templates from a YAML or JSON file (by name; all or nothing)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", metavar="FILE", help="A .yaml/.yml or .json file, or - for standard input.")
        parser.add_argument("--dry-run", action="store_true", help="Check the file and show what would change; write nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        raw = load_entries(options["file"])
        hv: Hypervisor | None = None
        if any(_has_clone(item) for item in raw):
            hv = hypervisor.get_hypervisor()  # one connection for every clone source checked
        try:
            entries = [self._check(index, item, hv) for index, item in enumerate(raw)]
            _flag_duplicates(entries)
            bad = [e for e in entries if e.errors]
            if bad:
                for entry in bad:
                    for error in entry.errors:
                        self.stderr.write(f"error {entry.label}: {error}")
                raise CommandError(f"{len(bad)} of {len(entries)} template(s) are invalid; nothing was written")
            for entry in entries:
                self._plan(entry)
            if not options["dry_run"]:
                self._write(entries, hv)
        finally:
            if hv is not None:
                hv.close()
        words = WOULD if options["dry_run"] else DONE
        for entry in entries:
            assert entry.data is not None
            detail = f" ({', '.join(entry.changed)})" if entry.changed else ""
            self.stdout.write(f"{words[entry.action]} {entry.data.name}{detail}")
        counts = {action: sum(e.action == action for e in entries) for action in (CREATE, UPDATE, UNCHANGED)}
        summary = ", ".join(f"{words[action]} {count}" for action, count in counts.items())
        self.stdout.write(f"{summary}; nothing written (dry run)" if options["dry_run"] else summary)

    def _check(self, index: int, item: Any, hv: Hypervisor | None) -> Entry:
        name = item.get("name") if isinstance(item, dict) else None
        entry = Entry(label=f"templates[{index}]" + (f" ({name})" if isinstance(name, str) and name else ""))
        if not isinstance(item, dict):
            entry.errors.append(f"must be a mapping of template fields, not {_kind(item)}")
            return entry
        serializer = TemplateSerializer(data=item)
        if not serializer.is_valid():
            entry.errors.extend(f"{path}: {message}" if path else message for path, message in _messages(serializer.errors))
            return entry
        data = serializer.to_data()
        try:
            iso = template_validate(data, hv=hv)
        except VaporError as exc:
            entry.errors.append(f"{exc.field}: {exc.message}" if exc.field else exc.message)
            return entry
        # The form template_data() gives back once stored: the ISO by name, os_type derived from the variant.
        entry.data = dataclasses.replace(data, iso=iso.name if iso else None, os_type=stored_os_type(data))
        return entry

    @staticmethod
    def _plan(entry: Entry) -> None:
        assert entry.data is not None
        entry.existing = (
            VmTemplate.objects.select_related("iso", "project").prefetch_related("disks", "nics").filter(name=entry.data.name).first()
        )
        if entry.existing is None:
            entry.action = CREATE
            return
        if entry.data.project is None:  # a file that names no project keeps the template where it is
            entry.data = dataclasses.replace(entry.data, project=entry.existing.project.name)
        before, after = template_out(template_data(entry.existing)), template_out(entry.data)
        entry.changed = tuple(key for key in after if before.get(key) != after[key])
        entry.action = UPDATE if entry.changed else UNCHANGED

    @staticmethod
    def _write(entries: list[Entry], hv: Hypervisor | None) -> None:
        """Every create and update in one transaction: one failing undoes the others."""
        current = entries[0] if entries else None
        try:
            with transaction.atomic():
                for current in entries:
                    assert current.data is not None
                    if current.action == CREATE:
                        template_create(data=current.data, hv=hv)
                    elif current.action == UPDATE:
                        assert current.existing is not None
                        template_update(template=current.existing, data=current.data, hv=hv)
        except VaporError as exc:
            field = f"{exc.field}: " if exc.field else ""
            where = f"{current.label}: " if current else ""
            raise CommandError(f"{where}{field}{exc.message}; nothing was written") from exc


def load_entries(file: str) -> list[Any]:
    """The file's template entries (not checked yet). Raises CommandError on anything unreadable."""
    label = "standard input" if file == "-" else file
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {file}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise CommandError(f"{label} is not UTF-8 text: {exc}") from exc
    suffix = Path(file).suffix.lower() if file != "-" else ""
    as_json = suffix == ".json" if suffix in (".json", ".yaml", ".yml") else text.lstrip().startswith(("{", "["))
    try:
        if as_json:
            content = json.loads(text)
        else:
            stream = io.StringIO(text)
            stream.name = label  # PyYAML names the file in its error marks
            content = yaml.safe_load(stream)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{label} is not valid JSON: {exc}") from exc
    except yaml.YAMLError as exc:
        raise CommandError(f"{label} is not valid YAML: {exc}") from exc
    if isinstance(content, dict):
        unknown = sorted(str(key) for key in content if key != "templates")
        if unknown:
            raise CommandError(f"{label}: unknown top-level key(s) {', '.join(unknown)}: expected only 'templates'")
        if "templates" not in content:
            raise CommandError(f"{label}: expected a list of templates or a mapping with a 'templates' list")
        content = content["templates"]
    if content is None:
        raise CommandError(f"{label} holds no templates")
    if not isinstance(content, list):
        raise CommandError(f"{label}: expected a list of templates, not {_kind(content)}")
    return content


def _has_clone(item: Any) -> bool:
    disks = item.get("disks") if isinstance(item, dict) else None
    return isinstance(disks, list) and any(isinstance(d, dict) and d.get("clone_from") for d in disks)


def _flag_duplicates(entries: list[Entry]) -> None:
    first: dict[str, str] = {}
    for entry in entries:
        if entry.data is None:
            continue
        if entry.data.name in first:
            entry.errors.append(f"name: {entry.data.name!r} is also given by {first[entry.data.name]}")
        else:
            first[entry.data.name] = entry.label


def _messages(errors: Any, path: str = "") -> list[tuple[str, str]]:
    """Serializer errors as (dotted field, message) pairs, e.g. ("disks.0.size", "...")."""
    if isinstance(errors, dict):
        found: list[tuple[str, str]] = []
        for key, value in errors.items():
            inner = path if key == "non_field_errors" else f"{path}.{key}" if path else str(key)
            found.extend(_messages(value, inner))
        return found
    if isinstance(errors, list):
        found = []
        for index, item in enumerate(errors):
            if isinstance(item, dict | list):
                found.extend(_messages(item, f"{path}.{index}" if path else str(index)))
            else:
                found.append((path, str(item)))
        return found
    return [(path, str(errors))]


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(type(value), type(value).__name__)

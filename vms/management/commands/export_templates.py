"""`manage.py export_templates [FILE] [--format yaml|json] [NAME ...]`: write VM templates to a file.

Writes the templates' portable form (the template API's input shape, the ISO
by name) as ``{"templates": [...]}``, sorted by name: every template, or the
NAMEs given. Without FILE, or with ``-``, the output goes to standard output;
to export named templates there, give ``-`` as FILE. `import_templates`
reads the result back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from django.core.management.base import BaseCommand, CommandError, CommandParser

from vms.api.template_serializers import template_out
from vms.models import VmTemplate
from vms.services.templates import template_data

SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}


class Command(BaseCommand):
    help = "Write VM templates (all, or the NAMEs given) as YAML or JSON that import_templates reads."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", nargs="?", default="-", metavar="FILE", help="A .yaml/.yml or .json file; - or none for stdout.")
        parser.add_argument("names", nargs="*", metavar="NAME", help="Templates to export (default: all).")
        parser.add_argument(
            "--format", choices=["yaml", "json"], default=None, help="Output format (default: from FILE's extension, else yaml)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        file: str = options["file"]
        suffix = Path(file).suffix.lower()
        if file != "-" and suffix not in SUFFIXES:
            raise CommandError(
                f"FILE {file!r} must end in .yaml, .yml or .json; to write named templates to standard output give - as FILE"
            )
        fmt = options["format"] or SUFFIXES.get(suffix, "yaml")
        names: list[str] = options["names"]
        templates = VmTemplate.objects.select_related("iso").prefetch_related("disks", "nics").order_by("name")
        if names:
            templates = templates.filter(name__in=names)
            unknown = sorted(set(names) - {t.name for t in templates})
            if unknown:
                raise CommandError(f"no template named {', '.join(unknown)}")
        document = {"templates": [template_out(template_data(t)) for t in templates]}
        if fmt == "json":
            text = json.dumps(document, indent=2) + "\n"
        else:
            text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, default_flow_style=False)
        if file == "-":
            self.stdout.write(text, ending="")
            return
        try:
            Path(file).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {file}: {exc.strerror or exc}") from exc
        self.stderr.write(f"exported {len(document['templates'])} template(s) to {file}")

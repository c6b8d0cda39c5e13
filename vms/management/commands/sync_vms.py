"""`manage.py sync_vms [--import] [--dry-run]`: compare Vapor's VMs with the host's domains.

Stores every VM's domain state, marks VMs whose domain vanished as missing
(and back when it returns), lists the domains Vapor does not know and, with
--import, adopts them. It never deletes a domain, a volume or a VM.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from vaporsite.errors import VaporError
from vms import hypervisor
from vms.host_models import Host
from vms.services.adoption import SyncReport, vm_sync


class Command(BaseCommand):
    help = "Refresh VM states from libvirt, report domains Vapor does not know and VMs whose domain is gone; --import adopts them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--import", dest="adopt", action="store_true", help="Create VMs for the domains Vapor does not know.")
        parser.add_argument("--dry-run", action="store_true", help="Show what would change; write nothing.")
        parser.add_argument("--uri", default=None, help="libvirt URI to read instead of the host's (default: the host's own).")
        parser.add_argument("--host", default=None, help="Only this host (by name); default: every host, one after the other.")

    def handle(self, *args: Any, **options: Any) -> None:
        hosts = list(Host.objects.all())
        if options["host"]:
            hosts = [host for host in hosts if host.name == options["host"]]
            if not hosts:
                raise CommandError(f"no host named {options['host']!r}")
        elif options["uri"]:
            hosts = [host for host in hosts if host.libvirt_uri == options["uri"]] or [h for h in hosts if h.is_default]
        failed = []
        for host in hosts:
            if len(hosts) > 1:
                self.stdout.write(f"Host {host.name} ({host.libvirt_uri}):")
            try:
                hv = hypervisor.get_hypervisor(options["uri"]) if options["uri"] else None
                report = vm_sync(hv=hv, host=host, adopt=options["adopt"], dry_run=options["dry_run"])
            except VaporError as exc:
                failed.append(f"host {host.name}: {exc.message}")
                self.stderr.write(f"host {host.name}: {exc.message}")
                continue
            self.stdout.write("\n".join(render(report, adopt=options["adopt"])))
        if failed:
            raise CommandError("; ".join(failed))


def _names(names: list[str]) -> list[str]:
    return [f"  {name}" for name in names]


def render(report: SyncReport, *, adopt: bool) -> list[str]:
    """The report as lines of text."""
    would = "would be " if report.dry_run else ""
    lines = ["Dry run: nothing is written."] if report.dry_run else []
    lines.append(f"VMs checked against the host: {report.checked}")
    if report.unknown:
        lines.append(f"Domains on the host that Vapor does not know: {len(report.unknown)}")
        lines += _names(report.unknown)
        if not adopt:
            lines.append("  (run with --import to adopt them)")
    if report.adopted:
        lines.append(f"{'Would adopt' if report.dry_run else 'Adopted'} as VMs: {len(report.adopted)}")
        for name in report.adopted:
            lines.append(f"  {name}")
            lines += [f"    not kept: {what}" for what in report.left_out.get(name, [])]
    if report.not_adopted:
        lines.append(f"Not adopted: {len(report.not_adopted)}")
        lines += [f"  {name}: {why}" for name, why in sorted(report.not_adopted.items())]
    if report.marked_missing:
        lines.append(f"VMs {would}marked missing (their domain is gone): {len(report.marked_missing)}")
        lines += _names(report.marked_missing)
    if report.still_missing:
        lines.append(f"VMs still missing: {len(report.still_missing)}")
        lines += _names(report.still_missing)
    if report.back:
        lines.append(f"VMs whose domain is back: {len(report.back)}")
        lines += _names(report.back)
    lines.append(
        f"Summary: {report.checked} checked, {len(report.unknown)} unknown, {len(report.adopted)} adopted, "
        f"{len(report.marked_missing)} newly missing, {len(report.still_missing)} still missing, {len(report.back)} back"
    )
    return lines

"""`manage.py hosts_check [NAME ...]`: read every host (or the NAMEs) now, as the schedule does, and list them.

Each host is read in its own thread, bounded in time; what was read (health,
facts, last seen, the error) is stored. Prints one line per host; exits with
an error when any host checked is down.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from vms.host_models import Host
from vms.services.hosts import hosts_check, hosts_usage


def _gib(value: int | None) -> str:
    return "?" if value is None else f"{value / 2**30:.1f}"


class Command(BaseCommand):
    help = "Check the hosts' health now (every host, or the NAMEs given) and list them with their usage."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="*", metavar="NAME", help="Hosts to check (default: all).")

    def handle(self, *args: Any, **options: Any) -> None:
        hosts = list(Host.objects.all())
        if options["names"]:
            unknown = sorted(set(options["names"]) - {h.name for h in hosts})
            if unknown:
                raise CommandError(f"no host named {', '.join(unknown)}")
            hosts = [h for h in hosts if h.name in options["names"]]
        health = hosts_check(hosts=hosts)
        hosts = list(Host.objects.filter(pk__in=[h.pk for h in hosts]))
        usage = hosts_usage(hosts)
        for host in hosts:
            used = usage[host.pk]
            flags = "".join([" disabled" if not host.enabled else "", " maintenance" if host.maintenance else ""])
            line = (
                f"{host.name:<20} {host.health:<7} {host.libvirt_uri}{flags}  VMs {used.vms}, "
                f"vCPUs {used.vcpus}/{used.vcpus_budget if used.vcpus_budget is not None else '?'}, "
                f"memory {_gib(used.memory_bytes)}/{_gib(used.memory_budget_bytes)} GiB"
            )
            self.stdout.write(line + (f"\n  {host.last_error}" if host.last_error else ""))
        down = sorted(name for name, state in health.items() if state != "up")
        if down:
            raise CommandError(f"down: {', '.join(down)}")

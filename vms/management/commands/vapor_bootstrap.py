"""`manage.py vapor_bootstrap`: the libvirt objects Vapor expects on a host.

A fresh libvirt host has no storage pool and an inactive `default` network,
so the first VM would fail. The run and test commands call this after
starting libvirtd; it is idempotent and says what it found or did. Options
let tests use scratch names instead of the host's real `default` objects.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from vaporsite.errors import InvalidInput, VaporError
from vms.hypervisor import Hypervisor, get_hypervisor
from vms.hypervisor.documents.network import nat_layout
from vms.hypervisor.errors import validate_bridge_name, validate_name


class Command(BaseCommand):
    help = "Make sure the default dir storage pool and the default NAT network exist, are active and autostart."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--uri", default=None, help="libvirt URI (default: VAPOR_LIBVIRT_URI).")
        parser.add_argument("--pool-name", default="default", help="Storage pool name (default: %(default)s).")
        parser.add_argument("--pool-path", default="/var/lib/libvirt/images", help="Directory of the pool (default: %(default)s).")
        parser.add_argument("--network-name", default="default", help="Network name (default: %(default)s).")
        parser.add_argument("--bridge", default="virbr0", help="Bridge of the network (default: %(default)s).")
        parser.add_argument("--cidr", default="192.168.122.0/24", help="IPv4 subnet of the network (default: %(default)s).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self._check(options)
        except VaporError as exc:
            raise CommandError(exc.message) from exc
        hypervisor = get_hypervisor(options["uri"])
        try:
            self._pool(hypervisor, options["pool_name"], options["pool_path"])
            self._network(hypervisor, options["network_name"], options["bridge"], options["cidr"])
        except VaporError as exc:
            raise CommandError(exc.message) from exc
        finally:
            hypervisor.close()

    @staticmethod
    def _check(options: dict[str, Any]) -> None:
        """Refuse bad options before anything is defined, so a typo in --cidr
        does not leave a new pool behind."""
        validate_name(options["pool_name"], field="pool_name", what="pool")
        if not options["pool_path"].startswith("/"):
            raise InvalidInput(f"--pool-path {options['pool_path']!r} must be an absolute directory", field="pool_path")
        validate_name(options["network_name"], field="network_name", what="network")
        validate_bridge_name(options["bridge"])
        nat_layout(options["cidr"])

    def _pool(self, hypervisor: Hypervisor, name: str, path: str) -> None:
        created = hypervisor.ensure_dir_pool(name, path)
        pool = hypervisor.pool(name)
        what = "defined" if created else "already defined"
        self.stdout.write(f"storage pool '{name}': {what} at {pool.path}; {_state(pool.active, pool.autostart)}")
        if pool.path != path:
            # Kept: an existing pool may hold disks, and its owner chose its path.
            self.stderr.write(self.style.WARNING(f"storage pool '{name}' uses {pool.path}, not {path}; left as it is"))

    def _network(self, hypervisor: Hypervisor, name: str, bridge: str, cidr: str) -> None:
        created = hypervisor.ensure_nat_network(name, bridge, cidr)
        network = next(n for n in hypervisor.list_networks() if n.name == name)
        what = "defined" if created else "already defined"
        self.stdout.write(
            f"network '{name}': {what}, {network.forward_mode or 'isolated'} on {network.bridge} {network.cidr}; "
            f"{_state(network.active, network.autostart)}"
        )
        if (network.bridge, network.cidr) != (bridge, cidr):
            found = f"{network.bridge} {network.cidr}"
            self.stderr.write(self.style.WARNING(f"network '{name}' is {found}, not {bridge} {cidr}; left as it is"))


def _state(active: bool, autostart: bool) -> str:
    return f"{'active' if active else 'INACTIVE'}, {'autostart' if autostart else 'no autostart'}"

"""The admin of the vms app, a module per model admin; importing them registers them."""

from vms.admin import consoles, hosts, machines, ssh_keys, templates

__all__ = ["consoles", "hosts", "machines", "ssh_keys", "templates"]

"""`runserver` that refuses to serve Django's debug pages beyond this machine.

With DEBUG on, an error page shows settings, code and the request to whoever
caused it; that is fine on a loopback address only. scripts/run.sh starts
this server, so the refusal holds for the run command as well.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from django.conf import settings
from django.contrib.staticfiles.management.commands.runserver import Command as StaticfilesRunserver
from django.core.management.base import CommandError


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback address ("0" is Django's 0.0.0.0)."""
    if host in ("", "0"):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in found}
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


class Command(StaticfilesRunserver):
    addr: str  # set by handle() from the address argument
    help = StaticfilesRunserver.help + " Refuses DEBUG (VAPOR_DEBUG) on an address other than loopback."

    def run(self, **options: Any) -> None:
        # handle() has parsed the address into self.addr by now.
        if settings.DEBUG and not is_loopback(self.addr):
            shown = "0.0.0.0" if self.addr == "0" else self.addr  # noqa: S104 (named in a message)
            raise CommandError(
                f"VAPOR_DEBUG is on and the server would listen on {shown}, which is not a loopback address: "
                "Django's debug pages would show settings and code to anyone who reaches it. "
                "Unset VAPOR_DEBUG (or set it to 0), or listen on 127.0.0.1 or [::1]."
            )
        super().run(**options)

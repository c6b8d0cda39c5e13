"""`manage.py serve [--bind HOST:PORT]`: the portal under uvicorn, HTTP and websockets, static files included.

The address comes from --bind, else VAPOR_LISTEN (127.0.0.1:8000); the
worker processes, keep-alive and graceful-shutdown timeouts from
VAPOR_WEB_WORKERS, VAPOR_WEB_KEEPALIVE and VAPOR_WEB_GRACEFUL_TIMEOUT. The
scheme and client address a reverse proxy reports (X-Forwarded-Proto,
X-Forwarded-For) are believed only from VAPOR_FORWARDED_ALLOW_IPS (127.0.0.1),
so behind nginx with TLS Django sees https. Like Vapor's runserver, it refuses
DEBUG on an address other than loopback. Bad values of those variables stop it
with the same errors `manage.py check` gives.
"""

from __future__ import annotations

import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from vaporsite.env import listen_address
from vaporsite.management.commands.runserver import is_loopback

ASGI_APPLICATION = "vaporsite.asgi:application"


class Command(BaseCommand):
    help = (
        "Serve Vapor (HTTP and websockets) with uvicorn on HOST:PORT (default VAPOR_LISTEN, 127.0.0.1:8000). "
        "Refuses DEBUG (VAPOR_DEBUG) on an address other than loopback."
    )
    # The system checks run first (requires_system_checks): a bad VAPOR_* value stops the command, named.

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", metavar="HOST:PORT", help="address to listen on (default: VAPOR_LISTEN, else 127.0.0.1:8000)")

    def handle(self, *args: Any, **options: Any) -> None:
        vapor = settings.VAPOR
        if options["bind"]:
            try:
                host, port = listen_address(options["bind"])
            except ValueError as exc:
                raise CommandError(f"--bind {options['bind']!r}: {exc}") from exc
        else:
            host, port = vapor.web_listen
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if settings.DEBUG and not is_loopback(host):
            raise CommandError(
                f"VAPOR_DEBUG is on and the server would listen on {shown}, which is not a loopback address: "
                "Django's debug pages would show settings and code to anyone who reaches it. "
                "Unset VAPOR_DEBUG (or set it to 0), or listen on 127.0.0.1 or [::1]."
            )
        static_root = settings.STATIC_ROOT
        if not settings.DEBUG and not (static_root and any(static_root.iterdir() if static_root.is_dir() else ())):
            self.stderr.write(f"serve: {static_root} holds no static files; run: manage.py collectstatic --noinput")

        import uvicorn

        self.stdout.write(f"serve: Vapor on http://{shown}/ ({vapor.web_workers} worker processes)")
        sys.stdout.flush()
        uvicorn.run(
            ASGI_APPLICATION,
            host=host,
            port=port,
            workers=vapor.web_workers,
            http="httptools",
            ws="websockets-sansio",
            # Pings keep an idle console's connection (and nginx's, docs/nginx.md) alive and find dead peers.
            ws_ping_interval=20.0,
            ws_ping_timeout=20.0,
            # No permessage-deflate: console bytes (RFB is compressed already) would cost CPU both ways
            # and a zlib context per open console, for little gain.
            ws_per_message_deflate=False,
            lifespan="on",
            proxy_headers=True,
            forwarded_allow_ips=list(vapor.forwarded_allow_ips),
            timeout_keep_alive=vapor.web_keepalive,
            timeout_graceful_shutdown=vapor.web_graceful_timeout,
            server_header=False,
            log_level=vapor.log_level.lower(),
        )

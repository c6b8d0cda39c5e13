"""Settings of the console benchmark's server: the product's, with websockets handed to
`bench.console_server.websocket_application` (the product's console application, behind the bench-only hook
that feeds some domains' consoles from a byte source or an echo)."""

from vaporsite.settings import *  # noqa: F403

VAPOR_WEBSOCKET_APPLICATION = "bench.console_server.websocket_application"

"""Vapor's settings with the test echo application on /ws/, for `manage.py serve` run by a test."""

from vaporsite.settings import *  # noqa: F403

VAPOR_WEBSOCKET_APPLICATION = "tests.support.echo_asgi.application"

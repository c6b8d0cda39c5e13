"""System checks for Vapor's environment configuration.

Each problem found while reading the environment becomes an error that
names the variable, so `manage.py check` (and every management command)
explains a misconfiguration instead of failing somewhere later.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register


@register(Tags.compatibility)
def environment_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = [
        Error(f"{problem.variable} {problem.message}", hint=f"Fix or unset {problem.variable}.", id="vapor.E001")
        for problem in settings.VAPOR.problems
    ]
    q: dict[str, Any] = settings.Q_CLUSTER
    if q["retry"] <= q["timeout"]:
        messages.append(
            Error(
                "django-q2 'retry' must be larger than 'timeout'",
                hint="VAPOR_TASK_TIMEOUT sets both; do not edit Q_CLUSTER by hand.",
                id="vapor.E002",
            )
        )
    return messages


@register(Tags.compatibility)
def directories_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    vapor = settings.VAPOR
    messages: list[CheckMessage] = []
    download_dir = vapor.download_dir
    if download_dir.exists() and not os.access(download_dir, os.W_OK):
        messages.append(
            Warning(
                f"VAPOR_ISO_DOWNLOAD_DIR {download_dir} is not writable: downloads will fail",
                id="vapor.W001",
            )
        )
    if not (vapor.osinfo_dir / "os").is_dir():
        messages.append(
            Warning(
                f"VAPOR_OSINFO_DIR {vapor.osinfo_dir} holds no osinfo-db: os_variant cannot be validated",
                hint="apt-get install osinfo-db",
                id="vapor.W002",
            )
        )
    return messages

"""Running the host tools the build needs, with a time limit and one error type."""

from __future__ import annotations

import subprocess
from pathlib import Path

TOOL_TIMEOUT = 120


class BootIsoError(RuntimeError):
    """The probe ISO could not be built (a tool or a download failed)."""


def run(argv: list[str], *, cwd: Path | None = None, timeout: float = TOOL_TIMEOUT) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BootIsoError(f"{argv[0]} failed: {exc}") from exc
    if done.returncode != 0:
        raise BootIsoError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout

"""The console pages' browser libraries: pinned exactly in frontend/package.json, locked, and served
by staticfiles from frontend/node_modules (scripts/setup.sh runs `npm ci`), only the subtrees a page loads."""

from __future__ import annotations

import json
import re
from pathlib import Path

from django.conf import settings
from django.contrib.staticfiles import finders

ROOT = Path(__file__).resolve().parent.parent
FRONTEND = ROOT / "frontend"


def test_every_package_is_pinned_to_one_version_and_locked_at_it():
    wanted = json.loads((FRONTEND / "package.json").read_text())["dependencies"]
    locked = json.loads((FRONTEND / "package-lock.json").read_text())["packages"]
    assert set(wanted) == {"@novnc/novnc", "@xterm/xterm", "@xterm/addon-fit"}
    for name, version in wanted.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} {version} is not an exact version"
        assert locked[f"node_modules/{name}"]["version"] == version
        assert locked[f"node_modules/{name}"]["integrity"].startswith("sha512-")


def test_static_files_come_from_node_modules_under_vendor():
    for prefix, directory in settings.STATICFILES_DIRS:
        assert prefix.startswith("vendor/") and Path(directory).is_relative_to(FRONTEND / "node_modules")


def test_the_files_the_pages_load_are_found():
    # noVNC as ES modules (core/, importing ../vendor/pako relatively), xterm.js and its fit addon as modules.
    for name in ("vendor/novnc/core/rfb.js", "vendor/novnc/vendor/pako/lib/zlib/inflate.js", "vendor/xterm/lib/xterm.mjs",
                 "vendor/xterm/css/xterm.css", "vendor/xterm-addon-fit/lib/addon-fit.mjs", "vms/consoles/vnc.js",
                 "vms/consoles/serial.js", "vms/consoles/ticket.js"):  # fmt: skip
        assert finders.find(name), f"{name} not found: run scripts/setup.sh (npm ci in frontend/)"
    rfb = finders.find("vendor/novnc/core/rfb.js")
    assert isinstance(rfb, str) and "export default class RFB" in Path(rfb).read_text()


def test_setup_installs_them_with_npm_ci_without_their_scripts():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "npm ci --ignore-scripts" in setup and "package-lock.json" in setup
    assert "node_modules" in (ROOT / ".gitignore").read_text().splitlines()  # no slash: a symlinked node_modules is ignored too

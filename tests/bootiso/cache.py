"""The built ISO, cached under var/cache/bootiso and rebuilt only when its inputs change.

The inputs are this package's files (the recipe, init.sh, the boot configs)
and the exact .deb files; both go into a stamp written beside the ISO.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.bootiso.iso import PROBE, SHELL, Variant, build
from tests.bootiso.packages import ensure_debs

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_CACHE_DIR = PACKAGE_DIR.parents[1] / "var" / "cache" / "bootiso"
STAMP_NAME = "vapor-probe.stamp.json"


def build_probe_iso(cache_dir: Path | None = None, *, shell: bool = False) -> Path:
    """Return the path of the probe ISO, building it first if it is missing or stale.

    With `shell`, the shell variant: the same report, then a shell on the
    serial port instead of powering off (see `build_shell_iso`).

    A file lock serialises test processes that ask at the same time (the
    second one waits and then finds the ISO fresh); the ISO is written under a
    temporary name and renamed, so nobody ever boots half an ISO.
    """
    variant = SHELL if shell else PROBE
    cache = (cache_dir or DEFAULT_CACHE_DIR).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    iso = cache / variant.iso_name
    stamp_file = cache / stamp_name(variant)
    with _locked(cache / ".lock"):
        debs = ensure_debs(cache / "debs")
        stamp = stamp_of(debs)
        if iso.is_file() and read_json(stamp_file) == stamp:
            return iso
        for leftover in cache.glob(".build-*"):  # from a build that was killed
            shutil.rmtree(leftover, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
        try:
            built = build(debs, work, variant)
            os.chmod(built, 0o644)
            os.replace(built, iso)
            tmp_stamp = work / stamp_file.name
            tmp_stamp.write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
            os.replace(tmp_stamp, stamp_file)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return iso


def build_shell_iso(cache_dir: Path | None = None) -> Path:
    """The shell ISO's path, built like the probe's: it prints the probe's report and
    MARKER, then SHELL_READY, and keeps a shell (with job control) on ttyS0 and
    one on the screen, restarted when they exit; it never powers off by itself
    (an ACPI shutdown does). Console tests boot it, or register it as an ISO."""
    return build_probe_iso(cache_dir, shell=True)


def stamp_name(variant: Variant) -> str:
    return STAMP_NAME if variant == PROBE else f"{variant.name}.stamp.json"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _builder_sha256() -> str:
    """One digest over the package's own files, by name and content."""
    digest = hashlib.sha256()
    for path in sorted([*PACKAGE_DIR.glob("*.py"), *PACKAGE_DIR.glob("*.sh")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def stamp_of(debs: dict[str, Path]) -> dict[str, object]:
    """The builder's inputs: this package's files (init script, configs, recipe) and the .deb file names (name + version)."""
    return {
        "builder_sha256": _builder_sha256(),
        "packages": {package: path.name for package, path in sorted(debs.items())},
    }

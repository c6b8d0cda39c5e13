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

from tests.bootiso.iso import ISO_NAME, build
from tests.bootiso.packages import ensure_debs

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_CACHE_DIR = PACKAGE_DIR.parents[1] / "var" / "cache" / "bootiso"
STAMP_NAME = "vapor-probe.stamp.json"


def build_probe_iso(cache_dir: Path | None = None) -> Path:
    """Return the path of the probe ISO, building it first if it is missing or stale.

    A file lock serialises test processes that ask at the same time (the
    second one waits and then finds the ISO fresh); the ISO is written under a
    temporary name and renamed, so nobody ever boots half an ISO.
    """
    cache = (cache_dir or DEFAULT_CACHE_DIR).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    iso = cache / ISO_NAME
    stamp_file = cache / STAMP_NAME
    with _locked(cache / ".lock"):
        debs = ensure_debs(cache / "debs")
        stamp = stamp_of(debs)
        if iso.is_file() and read_json(stamp_file) == stamp:
            return iso
        for leftover in cache.glob(".build-*"):  # from a build that was killed
            shutil.rmtree(leftover, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
        try:
            built = build(debs, work)
            os.chmod(built, 0o644)
            os.replace(built, iso)
            tmp_stamp = work / STAMP_NAME
            tmp_stamp.write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
            os.replace(tmp_stamp, stamp_file)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return iso


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

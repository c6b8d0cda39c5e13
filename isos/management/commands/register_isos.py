"""Bulk-register the ISO images found under one or more paths.

Hashing is the slow part: files are hashed in parallel (--jobs). When fewer
files are in flight than there are CPUs, each file's md5 runs on a helper
thread next to its sha256; when they fill the CPUs, each file is hashed on
one thread, as a helper would only compete with the other files for a CPU.
Database writes stay on the main thread, one file at a time, so SQLite never
sees concurrent writers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from isos.hashing import Digests, hash_file
from isos.inspect import is_iso_image
from isos.models import IsoImage
from isos.services import IsoMetadata, iso_register_path
from vaporsite.errors import VaporError
from vaporsite.paths import guard_file


@dataclass
class Candidate:
    path: Path  # resolved
    size: int


class Command(BaseCommand):
    help = "Register every ISO image found under the given files or directories (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", metavar="PATH", help="ISO files or directories to scan.")
        parser.add_argument("--recursive", "-r", action="store_true", help="Descend into subdirectories.")
        parser.add_argument("--tag", action="append", default=[], dest="tags", help="Tag every registered ISO (repeatable).")
        parser.add_argument("--dry-run", action="store_true", help="Show what would be registered; write nothing.")
        parser.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1, help="Files hashed at once (default: all cores).")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["jobs"] < 1:
            raise CommandError("--jobs must be at least 1")
        failed: list[tuple[str, str]] = []
        skipped: list[str] = []
        candidates = self._collect(options["paths"], options["recursive"], failed, skipped)
        if options["dry_run"]:
            for candidate in candidates:
                self.stdout.write(f"would register {candidate.path} ({candidate.size} bytes)")
            self._summary(registered=0, would=len(candidates), skipped=skipped, failed=failed)
        else:
            registered = self._register(candidates, tuple(options["tags"]), options["jobs"], failed, options["verbosity"])
            self._summary(registered=registered, would=None, skipped=skipped, failed=failed)
        if failed:
            raise CommandError(f"{len(failed)} file(s) failed", returncode=1)

    def _walk(self, root: Path, recursive: bool) -> Iterator[Path]:
        if recursive:
            for directory, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for filename in sorted(filenames):
                    yield Path(directory) / filename
        else:
            yield from sorted(p for p in root.iterdir() if not p.is_dir())

    def _collect(self, raw_paths: list[str], recursive: bool, failed: list[tuple[str, str]], skipped: list[str]) -> list[Candidate]:
        known = set(IsoImage.objects.values_list("path", flat=True))
        seen: set[Path] = set()
        found: list[Candidate] = []
        roots = settings.VAPOR.allowed_iso_roots
        for raw in raw_paths:
            top = Path(raw).absolute()
            explicit = not top.is_dir()
            files = [top] if explicit else list(self._walk(top, recursive))
            for file in files:
                if not explicit and ((file.is_symlink() and file.is_dir()) or not file.is_file()):
                    continue
                try:
                    resolved = guard_file(str(file), roots=roots, field="path", what="file")
                except VaporError as exc:
                    failed.append((str(file), exc.message))
                    continue
                if resolved in seen:
                    continue
                seen.add(resolved)
                if str(resolved) in known:
                    skipped.append(str(file))
                    continue
                if not is_iso_image(resolved):
                    if explicit:
                        failed.append((str(file), "not an ISO 9660 or UDF image"))
                    continue
                found.append(Candidate(resolved, resolved.stat().st_size))
        return found

    def _register(
        self, candidates: list[Candidate], tags: tuple[str, ...], jobs: int, failed: list[tuple[str, str]], verbosity: int
    ) -> int:
        registered = 0
        total = sum(c.size for c in candidates)
        parallel = min(jobs, len(candidates)) < len(os.sched_getaffinity(0))
        with (
            tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="hashing", file=self.stderr, disable=None) as bar,
            ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="hash") as pool,
        ):

            def advance(count: int) -> None:
                bar.update(count)

            futures: dict[Future[Digests], Candidate] = {
                pool.submit(hash_file, c.path, on_progress=advance, parallel=parallel): c for c in candidates
            }
            for future in as_completed(futures):
                candidate = futures[future]
                try:
                    digests = future.result()
                    iso = iso_register_path(path=str(candidate.path), meta=IsoMetadata(tags=tags), digests=digests)
                except OSError as exc:
                    failed.append((str(candidate.path), f"cannot read: {exc.strerror or exc}"))
                    continue
                except VaporError as exc:
                    failed.append((str(candidate.path), exc.message))
                    continue
                registered += 1
                if verbosity >= 1:
                    bar.write(f"registered {iso.pk} {iso.path}", file=self.stdout)
        return registered

    def _summary(self, *, registered: int, would: int | None, skipped: list[str], failed: list[tuple[str, str]]) -> None:
        for path, reason in failed:
            self.stderr.write(f"failed {path}: {reason}")
        head = f"would register {would}" if would is not None else f"registered {registered}"
        self.stdout.write(f"{head}, skipped {len(skipped)} (already registered), failed {len(failed)}")

"""Fail stalled downloads and remove partial files nobody owns (also runs hourly in django-q2)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from isos.services import iso_cleanup


class Command(BaseCommand):
    help = "Mark downloads/hashing without progress as failed and delete orphaned partial downloads."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--stale-minutes", type=int, default=30, help="No progress for this long means the worker died (default 30).")
        parser.add_argument("--dry-run", action="store_true", help="Only report.")

    def handle(self, *args: Any, **options: Any) -> None:
        stale, orphans = iso_cleanup(stale_after=timedelta(minutes=options["stale_minutes"]), dry_run=options["dry_run"])
        verb = "would" if options["dry_run"] else "did"
        for iso_id in stale:
            self.stdout.write(f"stalled: {iso_id}")
        for path in orphans:
            self.stdout.write(f"orphaned partial file: {path}")
        self.stdout.write(f"{verb} fail {len(stale)} stalled ISO(s), {verb} remove {len(orphans)} partial file(s)")

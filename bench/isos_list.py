"""Part 4 of bench.isos_bench: `GET /api/v1/virtualmachines/isos` with 10 and 1000 ISOs.

Without `limit`/`offset` the endpoint lists every ISO in one answer, as the spec shows it, so its cost grows
with the library; what must not grow is the number of SQL queries (tags are prefetched). The rows are inserted
with the ORM on a fresh SQLite database in the run's temp directory, never var/.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from bench.common import Section, django_setup, migrate
from bench.listing import ListEndpoint, measure_list

TAG_POOL = 30
ISO_LIST = ListEndpoint(url="/api/v1/virtualmachines/isos", key="isos", noun="ISO", children={"tags": 3})


def add_isos(start: int, stop: int) -> None:
    """ISOs `start`..`stop-1`, each with 3 of the pooled tags, inserted in bulk (the ORM, no services:
    the list endpoint is what is measured, not registration)."""
    from guestos.choices import OsType
    from isos.choices import Architecture, BootType, IsoStatus
    from isos.models import IsoImage, IsoTag

    tags = list(IsoTag.objects.order_by("name"))
    isos = [
        IsoImage(
            id=f"iso-{n:012x}",
            name=f"bench-{n:05d}.iso",
            path=f"/var/lib/vapor/iso/bench-{n:05d}.iso",
            size=4 * 1024**3 + n,
            os_type=OsType.LINUX,
            os_variant="ubuntu22.04",
            architecture=Architecture.X86_64,
            boot_type=BootType.HYBRID,
            volume_label=f"BENCH_{n:05d}",
            description=f"Benchmark image number {n}, a description of ordinary length.",
            md5_hash=hashlib.md5(str(n).encode(), usedforsecurity=False).hexdigest(),
            sha256_hash=hashlib.sha256(str(n).encode()).hexdigest(),
            status=IsoStatus.READY,
        )
        for n in range(start, stop)
    ]
    IsoImage.objects.bulk_create(isos)
    through = IsoImage.tags.through
    # Tags n, n+10 and n+20 of the pool of 30: three different tags per ISO.
    links = [through(isoimage_id=iso.pk, isotag_id=tags[(n + k * 10) % TAG_POOL].pk) for n, iso in enumerate(isos, start) for k in range(3)]
    through.objects.bulk_create(links)


def bench_list(workdir: Path, requests: int, sizes: Sequence[int]) -> Section:
    """Django is set up here, last, on a database in `workdir`: parts 1-3 need none."""
    django_setup(workdir)
    from django.db import connections

    from isos.models import IsoImage, IsoTag

    migrate("part 4: migrating a fresh SQLite database")
    IsoTag.objects.bulk_create([IsoTag(name=f"tag-{n:02d}") for n in range(TAG_POOL)])
    figures = measure_list(ISO_LIST, IsoImage, add_isos, requests, sizes)
    connections.close_all()
    return figures.section(
        part=4,
        setup=" in the temp dir, DEBUG off; each ISO has 3 tags.",
        prefetched="tags are prefetched",
        closing=(
            "The time includes serialising and parsing the JSON in the test client; the requests name no `limit`, so they get "
            "the whole list (pages of 100 against a bare DRF view: bench.api_bench, target 7)."
        ),
        digits=3,
    )

"""`manage.py sample_metrics [--rounds N] [--interval SECONDS] [--uri URI]`: force metrics rounds now.

The worker runs one round every minute (the schedule of migration 0012); this
runs the same round (`vms.services.metrics.metrics_sample`) from a shell. A
round stores rates against the previous round's counters, so the first round
after a while only stores counters: `--rounds 2 --interval 5` gives samples at once.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from vaporsite.errors import VaporError
from vms import hypervisor
from vms.services.metrics import MAX_INTERVAL, metrics_sample


class Command(BaseCommand):
    help = "Sample every running VM's and the host's CPU, memory, disk and network rates now (what the worker does every minute)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rounds", type=int, default=1, help="How many rounds (default 1).")
        parser.add_argument("--interval", type=float, default=10.0, help="Seconds between rounds (default 10).")
        parser.add_argument("--uri", default=None, help="libvirt URI (default: VAPOR_LIBVIRT_URI).")

    def handle(self, *args: Any, **options: Any) -> None:
        rounds, interval = options["rounds"], options["interval"]
        if not 1 <= rounds <= 1000:
            raise CommandError("--rounds must be between 1 and 1000")
        if not 0 < interval <= MAX_INTERVAL:
            raise CommandError(f"--interval must be more than 0 and at most {MAX_INTERVAL} seconds (longer gives no rate)")
        for number in range(rounds):
            if number:
                time.sleep(interval)
            try:
                done = metrics_sample(hv=hypervisor.get_hypervisor(options["uri"]))
            except VaporError as exc:
                raise CommandError(exc.message) from exc
            self.stdout.write(
                f"round {number + 1}: {done.domains} running domains, {done.vm_samples} VM samples, "
                f"host sample {'stored' if done.host_sample else 'not yet (first reading)'}, "
                f"{done.rolled_up} minute rows rolled up, {done.dropped} old rows dropped"
            )

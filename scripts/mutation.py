"""Mutation check over the rules that guard data and hosts (`make mutation`).

Each mutant breaks one rule on purpose: one exact snippet of one file is
replaced. The script copies the tree (the files git knows, committed or not)
into a temporary directory once, runs the named tests there unmutated (the
baseline: a selection that already fails proves nothing), then applies each
mutant in turn to that copy, runs its tests and puts the file back. The
working tree is never written, except docs/RELIABILITY.md with --write.

A mutant is *killed* when its tests fail and *survives* when they pass: a
surviving mutant is a rule no test would notice losing. A snippet that is not
found exactly once, a selection that collects nothing or a mutant that breaks
the import is an error, reported loudly: the table below is out of date (a
file moved, a line changed) and must be edited, not ignored.

    .venv/bin/python scripts/mutation.py            # run every mutant, print the table
    .venv/bin/python scripts/mutation.py --write    # ... and write the score into docs/RELIABILITY.md
    .venv/bin/python scripts/mutation.py --list     # the table, without running anything
    .venv/bin/python scripts/mutation.py --only sharing   # mutants whose rule or name contains a word

Exit status: 0 when every mutant was killed, 1 when one survived, 2 when the
table or the baseline is broken.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "RELIABILITY.md"
# The block this script owns in docs/RELIABILITY.md; tests/reliability/plugin.py keeps it when it rewrites the rest.
BLOCK_START = "<!-- mutation:start -->"
BLOCK_END = "<!-- mutation:end -->"
TIMEOUT = 300  # seconds per test run (the slowest selection takes ~3 min); a mutant that hangs its tests counts as killed
PYTEST = ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not libvirt and not browser"]


@dataclass(frozen=True)
class Mutant:
    rule: str  # the rule broken, in words
    name: str  # what this mutant does to it
    file: str  # relative to the repository root
    snippet: str  # exact text; must occur exactly once in the file
    replacement: str
    tests: tuple[str, ...]  # pytest arguments: test files, optionally "-k", "expression"


# Test selections, named once because several mutants share them.
SHARING_TESTS = ("tests/vms/test_request_guards.py", "tests/vms/test_create_api.py")
VOLUME_TESTS = ("tests/vms/test_request_guards.py", "tests/vms/test_create_api.py", "tests/vms/test_provisioning.py")
OWNERSHIP_TESTS = ("tests/vms/test_disk_ownership.py",)
HOST_OWNER_TESTS = ("tests/vms/test_host_disk_owners.py",)
ISO_PAIR_TESTS = ("tests/vms/test_request_guards.py", "tests/vms/test_create_api.py")
PATH_TESTS = ("tests/isos/test_api.py", "-k", "symlink or bad_paths or device_node")
PATH_TESTS_VMS = ("tests/reliability/test_hostile_paths.py",)
CHAIN_TESTS = ("tests/vms/test_images.py",)
PROJECT_TESTS = ("tests/vms/test_projects.py",)
SSRF_TESTS = ("tests/isos/test_download.py", "-k", "refuse or internal or allowed or accepts_public")
LIMIT_TESTS = ("tests/isos/test_download_limits.py",)

VALIDATION = "vms/services/validation.py"
LIFECYCLE = "vms/services/lifecycle.py"
DOMAIN_DOC = "vms/hypervisor/documents/domain.py"
DISK_MIGRATION = "vms/migrations/0010_disk_writable_path_unique.py"
PATHS = "vaporsite/paths.py"
IMAGES = "vms/hypervisor/images.py"
HYPERVISOR = "vms/hypervisor/__init__.py"
NETGUARD = "isos/netguard.py"
ACCESS = "projects/access.py"
DOWNLOAD = "isos/download.py"
PARTFILE = "isos/partfile.py"
CONSOLES = "vms/services/consoles.py"
CONSOLE_WS = "vms/consoles/websocket.py"
CONSOLE_TESTS = ("tests/vms/test_consoles.py",)

MUTANTS: list[Mutant] = [
    # --- two VMs must not write one image (both directions of the rule)
    Mutant(
        "sharing: two VMs must not write one image",
        "a read-write attachment is not checked at all",
        VALIDATION,
        "    users = Disk.objects.filter(path=path)\n",
        "    if not readonly:\n        return\n    users = Disk.objects.filter(path=path)\n",
        SHARING_TESTS,
    ),
    Mutant(
        "sharing: two VMs must not write one image",
        "a read-only attachment beside a read-write one is accepted",
        VALIDATION,
        "        users = users.filter(readonly=False)\n",
        "        users = users.none()\n",
        SHARING_TESTS,
    ),
    Mutant(
        "sharing: two VMs must not write one image",
        "the read-only exemption is dropped (read-only + read-only refused)",
        VALIDATION,
        "    if readonly:\n        users = users.filter(readonly=False)\n",
        "",
        SHARING_TESTS,
    ),
    # --- a file others only read (library ISO, template base, linked clone's backing file) is attached read-only only
    Mutant(
        "ownership: a library ISO is not a writable disk",
        "the ISO check is skipped",
        VALIDATION,
        "    if iso is not None:\n",
        "    if False:\n",
        OWNERSHIP_TESTS,
    ),
    Mutant(
        "ownership: a template's base is not a writable disk",
        "the template check is skipped",
        VALIDATION,
        "    if templates:\n",
        "    if False:\n",
        OWNERSHIP_TESTS,
    ),
    Mutant(
        "ownership: a linked clone's backing file is not a writable disk",
        "the backing-file check is skipped",
        VALIDATION,
        '    if names:\n        raise Conflict(f"{path} is the backing',
        '    if False:\n        raise Conflict(f"{path} is the backing',
        OWNERSHIP_TESTS,
    ),
    # --- a file a domain on the host uses, Vapor's or not (issue 11, point 1)
    Mutant(
        "host owners: a file a domain on the host uses is not attached writable",
        "the host is not asked",
        VALIDATION,
        '            _check_not_used_on_host(source_path, disk.readonly, f"{field}.path", host_uses)\n',
        "",
        HOST_OWNER_TESTS,
    ),
    Mutant(
        "host owners: a file a domain on the host uses is not attached writable",
        "a domain's read-only disk may be attached writable",
        VALIDATION,
        "    if readers:\n",
        "    if False:\n",
        HOST_OWNER_TESTS,
    ),
    Mutant(
        "host owners: a file a domain on the host uses is not attached writable",
        "backing chains in a domain's XML are not read",
        DOMAIN_DOC,
        '        for store in disk.iter("backingStore"):\n',
        "        for store in ():\n",
        HOST_OWNER_TESTS,
    ),
    # --- one writer per file in the database, and its 409
    Mutant(
        "one writer per file: the database refuses a second writable row of one path",
        "the constraint's condition never holds",
        DISK_MIGRATION,
        "condition=models.Q(('readonly', False),",
        "condition=models.Q(('readonly', None),",
        HOST_OWNER_TESTS,
    ),
    Mutant(
        "one writer per file: the database refuses a second writable row of one path",
        "the constraint's error is not turned into the 409",
        LIFECYCLE,
        "            if d.path and not d.readonly:\n",
        "            if False:\n",
        HOST_OWNER_TESTS,
    ),
    # --- ISO directories are never writable disk locations
    Mutant(
        "ISO directories: never a writable disk's location",
        "an existing disk in an ISO directory is not checked",
        VALIDATION,
        '            _check_not_in_iso_dir(source_path, disk.readonly, f"{field}.path")\n',
        "",
        HOST_OWNER_TESTS,
    ),
    Mutant(
        "ISO directories: never a writable disk's location",
        "a pool in an ISO directory takes new volumes",
        VALIDATION,
        "        _check_pool_not_iso_dir(pool)\n",
        "",
        HOST_OWNER_TESTS,
    ),
    # --- a volume that already exists in the pool is a 409, never replaced
    Mutant(
        "volume exists: a volume already in the pool is refused (409)",
        "the check is skipped",
        VALIDATION,
        "            if volume_exists(hv, pool.name, volume_name) or os.path.lexists(path):\n",
        "            if False:\n",
        VOLUME_TESTS,
    ),
    Mutant(
        "volume exists: a volume already in the pool is refused (409)",
        "volume_exists always answers no",
        HYPERVISOR,
        "    except NotFound:\n        return False\n    return True\n",
        "    except NotFound:\n        return False\n    return False\n",
        VOLUME_TESTS,
    ),
    # --- secondary_iso may not be the same file as iso_path
    Mutant(
        "secondary_iso is not the same file as iso_path",
        "the comparison is removed",
        VALIDATION,
        "        if planned and resolved.iso.path == planned[0].iso.path:\n",
        "        if False:\n",
        ISO_PAIR_TESTS,
    ),
    # --- the path guard (vaporsite/paths.py)
    Mutant(
        "path guard: a user's path stays inside the allowed roots",
        "the roots are not checked",
        PATHS,
        "    if not is_inside(resolved, roots):\n",
        "    if False:\n",
        PATH_TESTS,
    ),
    Mutant(
        "path guard: a user's path stays inside the allowed roots",
        "roots compared as string prefixes (/isos2 inside /isos)",
        PATHS,
        "path == root or path.is_relative_to(root)",
        "str(path).startswith(str(root))",
        PATH_TESTS,
    ),
    Mutant(
        "path guard: a user's path stays inside the allowed roots",
        "symlinks are not resolved",
        PATHS,
        "    resolved = Path(os.path.realpath(raw))\n",
        "    resolved = Path(os.path.normpath(raw))\n",
        PATH_TESTS,
    ),
    Mutant(
        "path guard: a user's path stays inside the allowed roots",
        "a device node or directory is accepted",
        PATHS,
        "    if not stat.S_ISREG(info.st_mode):\n",
        "    if False:\n",
        PATH_TESTS,
    ),
    Mutant(
        "path guard: a user's path stays inside the allowed roots",
        "the roots are not checked (disk paths, through the VM API)",
        PATHS,
        "    if not is_inside(resolved, roots):\n",
        "    if False:\n",
        PATH_TESTS_VMS,
    ),
    # --- the image chain check (vms/hypervisor/images.py)
    Mutant(
        "image chain: backing and data files stay inside the roots",
        "a file of the chain is not held to the roots",
        IMAGES,
        "    if not is_inside(Path(os.path.realpath(name)), roots):\n",
        "    if False:\n",
        CHAIN_TESTS,
    ),
    Mutant(
        "image chain: backing and data files stay inside the roots",
        "the walk does not check each backing file",
        IMAGES,
        "    if roots is not None:\n        _require_inside(real, roots, field=field, what=what)\n",
        "",
        CHAIN_TESTS,
    ),
    Mutant(
        "image chain: backing and data files stay inside the roots",
        "an external data file is not checked",
        IMAGES,
        "        if link.data_file is not None and roots is not None:\n",
        "        if False:\n",
        CHAIN_TESTS,
    ),
    Mutant(
        "image chain: backing and data files stay inside the roots",
        "check_image_chain checks nothing",
        IMAGES,
        '        _require_inside(name, roots, field=field, what=f"{name}, referenced by {info.path},")\n',
        "        pass\n",
        CHAIN_TESTS,
    ),
    # (The same test in _checked_file is a backstop: _link has already refused the name, so breaking only
    # that one changes nothing a test can see.)
    Mutant(
        "image chain: backing and data files stay inside the roots",
        "a backing protocol name (nbd:, json:) is accepted",
        IMAGES,
        "        if has_protocol(backing_name):\n",
        "        if False:\n",
        CHAIN_TESTS,
    ),
    # --- the SSRF guard (isos/netguard.py)
    Mutant(
        "SSRF guard: downloads connect only to public addresses",
        "a refused address is let through",
        NETGUARD,
        "        if why is not None:\n            return address, why\n",
        "        if why is not None:\n            continue\n",
        SSRF_TESTS,
    ),
    Mutant(
        "SSRF guard: downloads connect only to public addresses",
        "an IPv4-mapped IPv6 address is not unwrapped",
        NETGUARD,
        "            inner = refusal_reason(address.ipv4_mapped)\n",
        "            inner = None\n",
        SSRF_TESTS,
    ),
    Mutant(
        "SSRF guard: downloads connect only to public addresses",
        "6to4, Teredo and NAT64 forms are not unwrapped",
        NETGUARD,
        "            if embedded is not None and (inner := refusal_reason(embedded)) is not None:\n",
        "            if False and embedded is not None and (inner := refusal_reason(embedded)) is not None:\n",
        SSRF_TESTS,
    ),
    Mutant(
        "SSRF guard: downloads connect only to public addresses",
        "addresses that are not globally routable are accepted",
        NETGUARD,
        '        (not address.is_global, "an address that is not publicly routable"),\n',
        '        (False, "an address that is not publicly routable"),\n',
        SSRF_TESTS,
    ),
    Mutant(
        "SSRF guard: downloads connect only to public addresses",
        "private (RFC 1918, ULA) addresses are not named",
        NETGUARD,
        '        (any(address in network for network in PRIVATE_NETWORKS), "a private address"),\n',
        '        (False, "a private address"),\n',
        SSRF_TESTS,
    ),
    # --- projects: a member sees and changes only their projects, within their role and quotas (issue 11)
    Mutant(
        "projects: a member acts only within their role in the object's project",
        "a viewer's (or weaker) role is not compared with the one needed",
        ACCESS,
        "    if RANK[Role(held)] < RANK[Role(role)]:\n",
        "    if False:\n",
        PROJECT_TESTS,
    ),
    Mutant(
        "projects: a member acts only within their role in the object's project",
        "a non-member is not refused by the service",
        ACCESS,
        "    if held is None:\n        raise NotFound(",
        "    if False:\n        raise NotFound(",
        PROJECT_TESTS,
    ),
    Mutant(
        "projects: lists and lookups show only the user's projects",
        "the API's reads are not scoped",
        "vms/selectors.py",
        "    queryset = in_visible_projects(queryset, user)\n",
        "    queryset = queryset  # not scoped\n",
        PROJECT_TESTS,
    ),
    Mutant(
        "projects: lists and lookups show only the user's projects",
        "the admin's pages are not scoped",
        "projects/admin_scoping.py",
        '        return in_visible_projects(super().get_queryset(request).select_related("project"), request.user)\n',
        '        return super().get_queryset(request).select_related("project")\n',
        PROJECT_TESTS,
    ),
    Mutant(
        "quotas: a create past a project's quota is refused",
        "the use is not compared with the limit",
        "vms/services/quotas.py",
        "        if current + wanted > limit:\n",
        "        if False:\n",
        PROJECT_TESTS,
    ),
    Mutant(
        "projects: pools, networks and bridges outside a project's list are refused",
        "the project's list is not consulted",
        ACCESS,
        "    if allowed and name not in allowed:\n",
        "    if False:\n",
        PROJECT_TESTS,
    ),
    # --- bounds (issue 11, point 4): the pool's room, PCI devices per bus, tags per ISO
    Mutant(
        "bounds: new disks fit the pool's room (VAPOR_POOL_OVERCOMMIT)",
        "the room is not checked",
        VALIDATION,
        "        if asked > room:\n",
        "        if False:\n",
        ("tests/vms/test_pool_room.py",),
    ),
    Mutant(
        "bounds: disks per bus and NICs fit the PCI devices a VM may have",
        "the PCI devices are not counted",
        VALIDATION,
        "    if disks + len(request.networks) <= MAX_PCI_DEVICES:\n",
        "    if True:\n",
        ("tests/vms/test_bus_bounds.py",),
    ),
    Mutant(
        "bounds: disks per bus and NICs fit the PCI devices a VM may have",
        "only the first SCSI controller is written (libvirt adds lsilogic ones)",
        DOMAIN_DOC,
        '    for index in range(controllers_needed("scsi", scsi)):\n',
        '    for index in range(min(controllers_needed("scsi", scsi), 1)):\n',
        ("tests/vms/test_domain_xml.py", "-k", "scsi"),
    ),
    Mutant(
        "bounds: at most 50 tags per ISO",
        "the service does not count tags",
        "isos/services.py",
        "    if len(tags) > MAX_TAGS:\n",
        "    if False:\n",
        ("tests/isos/test_tag_bounds.py",),
    ),
    # --- downloads cannot hold a worker for ever, and nothing removes a live download's file (issue 11)
    Mutant(
        "Downloads: a minimum rate over a window",
        "the minimum rate is not checked",
        DOWNLOAD,
        "        if not self.policy.min_rate:\n            return\n",
        "        if True:\n            return\n",
        LIMIT_TESTS,
    ),
    Mutant(
        "Downloads: a whole-transfer deadline",
        "the deadline is not checked",
        DOWNLOAD,
        "        if now >= self.deadline_at:\n",
        "        if False:\n",
        LIMIT_TESTS,
    ),
    Mutant(
        "Downloads: a cancel is heard within 2 s at any speed",
        "the caller is called back only when bytes arrive",
        DOWNLOAD,
        "            if on_tick is not None and now >= next_tick:\n",
        "            if False:\n",
        (*LIMIT_TESTS, "-k", "cancel"),
    ),
    Mutant(
        "Downloads: a queue of their own",
        "downloads are queued on the main queue",
        "isos/services.py",
        '{"cluster": settings.DOWNLOAD_QUEUE} if func == DOWNLOAD_TASK else {}',
        "{}",
        (*LIMIT_TESTS, "-k", "queue"),
    ),
    Mutant(
        "Downloads: nothing removes a part file a live writer holds",
        "the remover ignores the lock",
        PARTFILE,
        "        if not _try_lock(fd) or not _same_file(fd, path):\n",
        "        if not _same_file(fd, path):\n",
        LIMIT_TESTS,
    ),
    Mutant(
        "Downloads: nothing removes a part file a live writer holds",
        "the writer takes no lock",
        PARTFILE,
        "                locked = _try_lock(fd)\n",
        "                locked = True\n",
        LIMIT_TESTS,
    ),
    # --- consoles: a ticket opens one console, once, for its user, VM and type, from this site
    Mutant(
        "consoles: a ticket is used once",
        "a used ticket is accepted again",
        CONSOLES,
        "token_hash=digest, used_at__isnull=True, expires_at__gt=now",
        "token_hash=digest, expires_at__gt=now",
        CONSOLE_TESTS,
    ),
    Mutant(
        "consoles: a ticket expires",
        "an expired ticket is accepted",
        CONSOLES,
        "token_hash=digest, used_at__isnull=True, expires_at__gt=now",
        "token_hash=digest, used_at__isnull=True",
        CONSOLE_TESTS,
    ),
    Mutant(
        "consoles: a ticket is bound to its VM",
        "a ticket opens another VM's console",
        CONSOLES,
        "    if row.vm_id != vm_id:\n",
        "    if False:\n",
        CONSOLE_TESTS,
    ),
    Mutant(
        "consoles: a ticket is bound to its console type",
        "a VNC ticket opens the serial console",
        CONSOLES,
        "    if row.type != type:\n",
        "    if False:\n",
        CONSOLE_TESTS,
    ),
    Mutant(
        "consoles: a ticket is bound to its user",
        "another user's session may use it",
        CONSOLES,
        "    if session_user_id is not None and session_user_id != row.user_id:\n",
        "    if False:\n",
        CONSOLE_TESTS,
    ),
    Mutant(
        "consoles: same-origin websockets only",
        "the Origin is not checked",
        CONSOLE_WS,
        "    problem = origin_problem(scope)\n",
        "    problem = None\n",
        CONSOLE_TESTS,
    ),
    Mutant(
        "consoles: viewers get no console",
        "the operator role is not needed to type",
        CONSOLES,
        'can_type = user.has_perm("vms.use_console") and RANK[Role(role)] >= RANK[Role.OPERATOR]',
        'can_type = user.has_perm("vms.use_console")',
        CONSOLE_TESTS,
    ),
    Mutant(
        "consoles: read-only sessions do not type",
        "a watcher's input reaches the guest",
        CONSOLE_WS,
        "        if not data or console.grant.read_only:\n",
        "        if not data:\n",
        CONSOLE_TESTS,
    ),
    Mutant(
        "consoles: an open console ends with its user's access",
        "a deactivated user's console stays open",
        CONSOLES,
        "        elif user is None:\n",
        "        elif False:\n",
        CONSOLE_TESTS,
    ),
    # --- issue 13: the admin as a cockpit
    Mutant(
        "delete says what it does: Keep disks erases no disk",
        "Keep disks is ignored: Vapor's volumes are erased anyway",
        LIFECYCLE,
        "            if keep_disks:\n                kept.append(",
        "            if False:\n                kept.append(",
        ("tests/vms/test_delete_plan.py",),
    ),
    Mutant(
        "the VM page's power buttons act only on a POST",
        "a GET to a power button's URL starts or stops the VM",
        "vms/admin/machines.py",
        '        if request.method != "POST":\n            return HttpResponseNotAllowed(["POST"])\n        if action not in POWER_LABELS:',
        "        if action not in POWER_LABELS:",
        ("tests/vms/test_admin_machines.py",),
    ),
    Mutant(
        "ISO directories watched: an unchanged file is never read, a changed one is",
        "a file of the same size but a new mtime is taken as unchanged",
        "isos/services.py",
        "    if iso.size == info.st_size and iso.file_mtime_ns == info.st_mtime_ns:\n",
        "    if iso.size == info.st_size:\n",
        ("tests/isos/test_scan.py",),
    ),
    Mutant(
        "ISO directories watched: a file still being written is not registered",
        "a file changed a moment ago is registered at once",
        "isos/services.py",
        "    settled = now - info.st_mtime >= settle\n",
        "    settled = True\n",
        ("tests/isos/test_scan.py",),
    ),
    Mutant(
        "create page: an install ISO that will not boot with the firmware is warned about",
        "a BIOS-only ISO is warned about even without UEFI",
        VALIDATION,
        "    if boot_type == BootType.BIOS and uefi:\n",
        "    if boot_type == BootType.BIOS:\n",
        ("tests/vms/test_admin_create_page.py",),
    ),
    Mutant(
        "graphs: a restarted guest gives a gap, never a negative rate",
        "counters that went backwards are turned into rates",
        "vms/services/metrics.py",
        "    if any(delta < 0 for delta in deltas):\n",
        "    if False:\n",
        ("tests/vms/test_metrics.py",),
    ),
    Mutant(
        "graphs: only users who may view a VM see its graphs",
        "the project check on the VM's graphs is dropped",
        "vms/templatetags/vapor_vm_graphs.py",
        "    if not in_visible_projects(VirtualMachine.objects.filter(pk=vm.pk), user).exists():\n        return None\n",
        "",
        ("tests/vms/test_metrics_pages.py",),
    ),
    # --- ISO uploads (issue 14): an upload is its owner's; a chunk continues exactly where the file ends
    Mutant(
        "uploads: an upload is its owner's only",
        "any user with the add permission reaches anyone's upload",
        "isos/uploads.py",
        "    upload = IsoUpload.objects.filter(pk=upload_id, owner_id=owner_id).first()\n",
        "    upload = IsoUpload.objects.filter(pk=upload_id).first()\n",
        ("tests/reliability/test_upload_authorization.py",),
    ),
    Mutant(
        "uploads: a chunk must start at the upload's offset",
        "a chunk at any offset is written where it says",
        "isos/uploads.py",
        "        if start != upload.offset:\n",
        "        if False:\n",
        ("tests/isos/test_upload.py",),
    ),
    # --- day two: addresses (its mutants go right below this line)
    Mutant(
        "addresses: a NAT network's DHCP lease is a source of guest addresses",
        "the lease source is dropped",
        "vms/hypervisor/addresses.py",
        '    ("lease", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE),\n',
        "",
        ("tests/vms/test_addresses.py", "-k", "driver"),
    ),
    Mutant(
        "addresses: the guest agent is asked only when it is connected",
        "a silent agent is asked too (each refresh waits for its timeout)",
        "vms/hypervisor/addresses.py",
        '                    if source == "agent" and not connected:\n                        continue\n',
        "",
        ("tests/vms/test_addresses.py", "-k", "driver"),
    ),
    Mutant(
        "addresses: the VM list never reads addresses per row",
        "the admin list's IP line reads each VM's NICs with a query of its own",
        "vms/admin/machines.py",
        '        return super().get_queryset(request).prefetch_related("nics")  # the IP line: no query per row\n',
        "        return super().get_queryset(request)\n",
        ("tests/vms/test_addresses.py", "-k", "admin_list"),
    ),
    Mutant(
        "addresses: refreshing a VM needs the operator role in its project",
        "the refresh service's role check is dropped",
        "vms/services/states.py",
        '    require(actor, vm.project, Role.OPERATOR, f"VM {vm.name}")\n    vm_refresh_states(hv=hv, ids=[vm.pk])\n',
        "    vm_refresh_states(hv=hv, ids=[vm.pk])\n",
        ("tests/vms/test_addresses.py", "-k", "refresh_service"),
    ),
    # --- day two: hardware (its mutants go right below this line)
    Mutant(
        "hardware: a maximum changes only while the VM is stopped",
        "a running VM's max_memory / max_vcpus is changed",
        "vms/services/hardware.py",
        "            if new is not None and new != old:\n",
        "            if False:\n",
        ("tests/vms/test_hardware.py", "-k", "running_state_forbids"),
    ),
    Mutant(
        "hardware: a running VM changes live only within its maxima",
        "memory or vCPUs above the maximum are asked of libvirt",
        "vms/services/hardware.py",
        "            if new > maximum:\n",
        "            if False:\n",
        ("tests/vms/test_hardware.py", "-k", "running_state_forbids"),
    ),
    Mutant(
        "hardware: added memory and vCPUs count against the project's quota",
        "the quota check of a hardware change is skipped",
        "vms/services/hardware.py",
        "        if more.vcpus or more.memory_mb:\n",
        "        if False:\n",
        ("tests/vms/test_hardware.py", "-k", "quota"),
    ),
    Mutant(
        "hardware: a libvirt failure part-way undoes the steps done",
        "the steps done are left in place",
        "vms/services/hardware.py",
        "                undo()\n",
        "                pass\n",
        ("tests/vms/test_hardware.py", "-k", "failure_part_way"),
    ),
    Mutant(
        "hardware: a NIC's MAC is no other Vapor NIC's",
        "a MAC in use is taken again",
        "vms/services/hardware.py",
        "        if NetworkInterface.objects.filter(mac=mac).exists():\n",
        "        if False:\n",
        ("tests/vms/test_hardware.py", "-k", "mac_in_use"),
    ),
    Mutant(
        "hardware: new q35 VMs keep spare pcie-root-ports for hot-plug",
        "only the root ports the devices take are written",
        DOMAIN_DOC,
        "    for index in range(1, placed + spec.pcie_root_ports + 1):\n",
        "    for index in range(1, placed + 1):\n",
        ("tests/vms/test_domain_xml.py",),
    ),
    # --- day two: disks (its mutants go right below this line)
    Mutant(
        "disks: SATA and IDE are never hot-plugged into a running VM",
        "a SATA disk is attached to a running VM",
        "vms/services/devices.py",
        "    if target.live and request.bus not in HOTPLUG_BUSES:\n",
        "    if False:\n",
        ("tests/vms/test_disks_api.py", "-k", "refused_attaches"),
    ),
    Mutant(
        "disks: a disk the VM's snapshots hold is never shrunk",
        "a shrink under snapshots is the plain 400",
        "vms/services/devices.py",
        "        if holders := snapshot_holders(vm=vm, hv=hv, target_dev=target_dev):\n",
        "        if holders := []:\n",
        ("tests/vms/test_disks_api.py", "-k", "snapshots"),
    ),
    Mutant(
        "disks: a disk the VM's snapshots hold is never detached",
        "the snapshot list is not read before a detach",
        "vms/services/devices.py",
        "    if count := len(holders := snapshot_holders(vm=vm, hv=hv, target_dev=target_dev)):\n",
        "    if count := len(holders := []):\n",
        ("tests/vms/test_disks_api.py", "-k", "snapshots"),
    ),
    Mutant(
        "disks: disks only grow",
        "a smaller size is passed to the resize",
        "vms/services/devices.py",
        "    if size_gb * GIB < current:\n",
        "    if False:\n",
        ("tests/vms/test_disks_api.py", "-k", "shrinking"),
    ),
    Mutant(
        "disks: a failed attach removes the volume it created",
        "the new volume is left behind",
        "vms/services/devices.py",
        "        if created:\n            _delete_quietly(",
        "        if False:\n            _delete_quietly(",
        ("tests/vms/test_disks_api.py", "-k", "failed_attach"),
    ),
    Mutant(
        "disks: delete_volume deletes only a volume Vapor created for the VM",
        "an existing file is deleted with the disk",
        "vms/services/devices.py",
        "    deletes = delete_volume and disk.created_by_vapor and bool(disk.volume_name)\n",
        "    deletes = delete_volume\n",
        ("tests/vms/test_disks_api.py", "-k", "attached_once_writable"),
    ),
    Mutant(
        "CD-ROMs: only a ready library ISO is inserted",
        "an ISO still hashing is inserted",
        "vms/services/cdroms.py",
        '    require_ready(resolved, field="iso")\n',
        "    pass\n",
        ("tests/vms/test_disks_api.py", "-k", "insert_refusals"),
    ),
    # --- day two: snapshots (its mutants go right below this line)
    Mutant(
        "snapshots: a running UEFI VM is refused before libvirt is asked",
        "a running UEFI VM's snapshot goes to the hypervisor",
        "vms/services/snapshots.py",
        "        if vm.uefi:\n            raise Conflict(",
        "        if False:\n            raise Conflict(",
        ("tests/vms/test_snapshots.py", "-k", "uefi"),
    ),
    Mutant(
        "snapshots: a running VM's snapshot holds its memory",
        "a disk-only snapshot of a running VM goes to the hypervisor",
        "vms/services/snapshots.py",
        "        if not memory:\n",
        "        if False:\n",
        ("tests/vms/test_snapshots.py", "-k", "refusals"),
    ),
    Mutant(
        "snapshots: a snapshot's name is validated",
        "any non-empty name is taken",
        "vms/services/snapshots.py",
        '    if not NAME_RE.match(name or ""):\n',
        "    if not name:\n",
        ("tests/vms/test_snapshots.py", "-k", "refusals"),
    ),
    Mutant(
        "snapshots: a revert restores a UEFI VM's variables",
        "the NVRAM copy is not written back",
        "vms/services/snapshots.py",
        "            hv.restore_nvram(vm.name, vm.storage_pool, snapshot.nvram_volume or None)\n",
        "",
        ("tests/vms/test_snapshots.py", "-k", "uefi"),
    ),
    Mutant(
        "snapshots: a revert is refused once the VM's hardware changed",
        "libvirt brings back an old definition behind Vapor's rows",
        "vms/services/snapshots.py",
        "    if changed := _changed_since(snapshot, vm):\n",
        "    if changed := []:\n",
        ("tests/vms/test_snapshots.py", "-k", "hardware"),
    ),
    Mutant(
        "snapshots: a VM is deleted with its snapshots' files",
        "the NVRAM copies are left in the pool",
        "vms/services/lifecycle.py",
        "    volumes += snapshot_volumes\n",
        "",
        ("tests/vms/test_snapshots.py", "-k", "deleting"),
    ),
    # --- day two: cloud_init (its mutants go right below this line)
    Mutant(
        "cloud-init: an SSH key's data must hold the type its line states",
        "the embedded type is no longer compared with the stated one",
        "vms/services/ssh_keys.py",
        "    if embedded != kind:\n",
        "    if embedded is None:\n",
        ("tests/vms/test_cloud_init.py",),
    ),
    Mutant(
        "cloud-init: user_data is shown only to users who may change the VM",
        "the VM's detail shows user_data to everyone who may view it",
        "vms/api/cloud_init_serializers.py",
        '    if can_change:\n        out["user_data"] = encryption.decrypt',
        '    if True:\n        out["user_data"] = encryption.decrypt',
        ("tests/vms/test_cloud_init.py", "-k", "user_data_is_shown"),
    ),
    Mutant(
        "cloud-init: the seed ISO is deleted with the VM",
        "the delete plan forgets the seed's volume",
        "vms/services/cloud_init.py",
        '    return [(seed.path, "the cloud-init seed ISO Vapor made", seed.volume_name)] if seed else []',
        "    return []",
        ("tests/vms/test_cloud_init.py", "-k", "deleted_with_the_vm"),
    ),
    Mutant(
        "SSH keys: another user's key is out of reach",
        "DELETE /api/v1/profile/ssh-keys/{id} deletes anyone's key",
        "vms/services/ssh_keys.py",
        "SshPublicKey.objects.filter(pk=key_id, user=user).first()",
        "SshPublicKey.objects.filter(pk=key_id).first()",
        ("tests/reliability/test_authorization_ssh_keys.py",),
    ),
]


@dataclass
class Result:
    mutant: Mutant
    outcome: str  # killed, survived, timeout (counted as killed), error
    seconds: float
    detail: str = ""


class TableError(Exception):
    """The table does not match the code: a snippet moved, a selection collects nothing."""


def copy_tree(dest: Path) -> None:
    """The files git knows in the working tree (tracked, or new and not ignored), as they are now."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if name == ".venv" or name.startswith(".venv/") or not os.path.lexists(source):
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)


def pytest_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CI")}
    # No stale bytecode: a mutant may keep a file's size and land within the same second as the original.
    return env | {"VAPOR_Q_SYNC": "1", "VAPOR_DOWNLOAD_ALLOW_PRIVATE": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[int | None, str]:
    """pytest's exit status (None on timeout) and the tail of its output."""
    try:
        done = subprocess.run(
            [sys.executable, *PYTEST, *tests], cwd=tree, env=pytest_env(), capture_output=True, text=True, timeout=TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return None, f"no answer within {TIMEOUT} s"
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return done.returncode, "\n".join(lines[-15:])


def check_table(tree: Path, mutants: list[Mutant]) -> None:
    problems = []
    for mutant in mutants:
        path = tree / mutant.file
        if not path.exists():
            problems.append(f"{mutant.file}: no such file (for '{mutant.name}')")
            continue
        count = path.read_text().count(mutant.snippet)
        if count != 1:
            problems.append(f"{mutant.file}: the snippet for '{mutant.name}' occurs {count} times, not once:\n{mutant.snippet}")
    if problems:
        raise TableError("\n".join(problems))


def baseline(tree: Path, mutants: list[Mutant]) -> None:
    for tests in dict.fromkeys(m.tests for m in mutants):
        started = time.monotonic()
        status, tail = run_tests(tree, tests)
        say(f"baseline {' '.join(tests)}: exit {status} ({time.monotonic() - started:.0f} s)")
        if status != 0:
            raise TableError(f"the unmutated tree fails {' '.join(tests)} (exit {status}): nothing can be learnt from it\n{tail}")


def run_mutant(tree: Path, mutant: Mutant) -> Result:
    path = tree / mutant.file
    original = path.read_text()
    path.write_text(original.replace(mutant.snippet, mutant.replacement, 1))
    started = time.monotonic()
    try:
        status, tail = run_tests(tree, mutant.tests)
    finally:
        path.write_text(original)
    seconds = time.monotonic() - started
    if status is None:
        return Result(mutant, "timeout", seconds, tail)
    if status == 0:
        return Result(mutant, "survived", seconds, "the tests passed with the rule broken")
    if status == 1:
        failed = [line for line in tail.splitlines() if line.startswith(("FAILED", "ERROR"))]
        return Result(mutant, "killed", seconds, failed[0] if failed else tail.splitlines()[-1])
    # 2: interrupted (e.g. an import error), 3: internal error, 4: usage, 5: nothing collected.
    return Result(mutant, "error", seconds, f"pytest exit {status}: {tail}")


def say(message: str) -> None:
    print(f"mutation: {message}", flush=True)


def render_block(results: list[Result], args: list[str]) -> str:
    killed = sum(r.outcome in ("killed", "timeout") for r in results)
    survived = [r for r in results if r.outcome == "survived"]
    errors = [r for r in results if r.outcome == "error"]
    lines = [
        BLOCK_START,
        "## Mutation check",
        "",
        "Written by `make mutation` (`scripts/mutation.py --write`); do not edit by hand. Each mutant breaks one",
        "rule that guards data or hosts (one exact snippet replaced, in a temporary copy of the tree) and runs the",
        "tests named for it; a mutant whose tests still pass *survived*: no test would notice the rule gone.",
        "",
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; command: `scripts/mutation.py {' '.join(args)}`".rstrip(),
        f"- Score: **{killed} of {len(results)} mutants killed**"
        + (f"; **{len(survived)} survived**" if survived else "")
        + (f"; **{len(errors)} could not run**" if errors else ""),
        "",
        "| rule | mutation | file | tests | result |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        m = r.mutant
        outcome = {"killed": "killed", "timeout": "killed (its tests hung)"}.get(r.outcome, f"**{r.outcome}**")
        lines.append(f"| {m.rule} | {m.name} | `{m.file}` | `{shlex.join(m.tests)}` | {outcome} |".replace("\n", " "))
    lines.append(BLOCK_END)
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str) -> str:
    pattern = re.compile(re.escape(BLOCK_START) + r".*?" + re.escape(BLOCK_END) + r"\n?", re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return text.rstrip("\n") + "\n\n" + block


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the score into docs/RELIABILITY.md")
    parser.add_argument("--list", action="store_true", help="print the table and stop")
    parser.add_argument("--only", help="run only the mutants whose rule or name contains this word")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of each selection")
    options = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not options.only or options.only.lower() in f"{m.rule} {m.name}".lower()]
    if options.list:
        for m in mutants:
            print(f"{m.rule} | {m.name} | {m.file} | {shlex.join(m.tests)}")
        return 0
    if not mutants:
        say(f"no mutant matches {options.only!r}")
        return 2
    if options.write and options.only:
        say("--write records the score of the whole table; run it without --only")
        return 2
    with tempfile.TemporaryDirectory(prefix="vapor-mutation-") as scratch:
        tree = Path(scratch) / "tree"
        copy_tree(tree)
        try:
            check_table(tree, mutants)
            if not options.no_baseline:
                baseline(tree, mutants)
        except TableError as exc:
            say(f"ERROR: {exc}")
            return 2
        results = []
        for index, mutant in enumerate(mutants, 1):
            result = run_mutant(tree, mutant)
            results.append(result)
            say(f"[{index}/{len(mutants)}] {result.outcome.upper():8} {mutant.rule}: {mutant.name} ({result.seconds:.0f} s)")
            if result.outcome != "killed":
                say(f"    {result.detail}")
    killed = sum(r.outcome in ("killed", "timeout") for r in results)
    say(f"score: {killed} of {len(results)} mutants killed")
    if options.write:
        REPORT.write_text(replace_block(REPORT.read_text() if REPORT.exists() else "# Reliability\n", render_block(results, argv)))
        say(f"wrote the score into {REPORT.relative_to(ROOT)}")
    if any(r.outcome == "error" for r in results):
        return 2
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a plain kill still removes the temporary copy
    sys.exit(main(sys.argv[1:]))

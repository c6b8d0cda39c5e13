"""Rewrite the golden domain XML files in tests/data/domain/ from the builder.

    .venv/bin/python -m tests.golden

Run it after an intended change to the domain XML and review `git diff`:
the tests only ever compare against these files and fail on a difference.
"""

from __future__ import annotations

import sys

from tests.vms.test_domain_xml import DATA, EXAMPLES, domain_xml


def main() -> int:
    for name, build in sorted(EXAMPLES.items()):
        path = DATA / f"{name}.xml"
        produced = domain_xml(build())
        if not path.exists() or path.read_text() != produced:
            path.write_text(produced)
            print(f"rewrote {path}")
        else:
            print(f"unchanged {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

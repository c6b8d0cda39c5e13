# Thin wrappers over scripts/: the scripts are the source of truth (and what
# CI runs), so `make` adds no behaviour of its own.
#   make run             set up, then serve on 127.0.0.1:8000 with a worker
#   make test ARGS=-x    set up, then the whole suite (extra pytest arguments)
#   make lint            ruff, mypy, migrations in sync, OpenAPI schema valid
#   make bench           benchmarks (bench/), figures written to docs/BENCHMARKS.md
#   make reliability     hostile inputs, authorization, injected faults; figures written to docs/RELIABILITY.md
#   make mutation        break each rule that guards data and hosts in a copy of the tree; score written to docs/RELIABILITY.md

PY := .venv/bin/python
ARGS ?=

.PHONY: run test lint bench reliability mutation venv

run:
	bash scripts/run.sh

test:
	bash scripts/test.sh $(ARGS)

venv:
	bash scripts/setup.sh --venv

lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy .
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) manage.py spectacular --validate --fail-on-warn --file /dev/null

# One line per benchmark module; --write refreshes its figures in docs/BENCHMARKS.md.
bench: venv
	$(PY) -m bench.isos_bench --write $(ARGS)
	$(PY) -m bench.isos_upload --write $(UPLOAD_ARGS)
	bash scripts/libvirtd.sh start && $(PY) -m bench.vms_bench --write $(VMS_ARGS)
	bash scripts/libvirtd.sh start && $(PY) -m bench.api_bench --write $(API_ARGS)
	bash scripts/libvirtd.sh start && $(PY) -m bench.consoles_bench --write $(CONSOLES_ARGS)
	bash scripts/libvirtd.sh start && $(PY) -m bench.metrics_bench --write $(METRICS_ARGS)
	$(PY) -m bench.addresses_bench --write $(ADDRESSES_ARGS)
	$(PY) -m bench.placement --write $(PLACEMENT_ARGS)
	bash scripts/libvirtd.sh start && $(PY) -m bench.hotattach_bench --write $(HOTATTACH_ARGS)
	bash scripts/libvirtd.sh start && bash scripts/hosts.sh start 1 && $(PY) -m bench.connections_bench --write \
	  --uri qemu:///system --uri "$$(bash scripts/hosts.sh uri vh1)" --uri "$$(bash scripts/hosts.sh uri vh1 --tls)" $(CONNECTIONS_ARGS); \
	  status=$$?; bash scripts/hosts.sh stop; exit $$status
	$(PY) -m bench.hosts_bench --write $(HOSTS_ARGS)
	bash scripts/hosts.sh start 1 && { $(PY) -m bench.iso_copy --write $(ISOCOPY_ARGS); rc=$$?; bash scripts/hosts.sh stop; exit $$rc; }

# The reliability suites (hostile inputs, authorization, injected faults); their figures go to docs/RELIABILITY.md.
# The SQLite pass records its cases; the PostgreSQL pass adds its own and writes the report.
reliability: venv
	bash scripts/libvirtd.sh start
	env -u DATABASE_URL $(PY) -m pytest -m "reliability and not postgres" $(ARGS)
	DATABASE_URL=$${VAPOR_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/vapor} \
	  $(PY) -m pytest -m "reliability and postgres" --reliability-append --reliability-report $(ARGS)

# One mutant at a time in a temporary copy of the tree (scripts/mutation.py holds the table); fails if one survives.
mutation: venv
	$(PY) scripts/mutation.py --write $(ARGS)

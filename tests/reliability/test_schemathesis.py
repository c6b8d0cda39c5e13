"""Schemathesis against /api/schema/: every operation, authenticated as a superuser.

The schema is read from the app itself (WSGI, in-process) and each operation
gets a bounded, derandomized batch of generated requests. Every response must
be free of server errors and match the schema (status code and body). The
hypervisor is the in-memory fake, ISO directories are temporary and queued
tasks never run (they wait for a commit that the test transaction never makes).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.conftest import IsoDirs
from tests.fakes import FakeHypervisor
from tests.reliability.conftest import Tally
from tests.support.factories import AdminFactory
from tests.support.isos import make_iso
from vaporsite.wsgi import application

pytestmark = [pytest.mark.reliability, pytest.mark.sqlite_pass, pytest.mark.django_db]

SUITE = "schemathesis"
MAX_EXAMPLES = 15
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


def _operations() -> list[str]:
    """ "METHOD path" for every operation the schema describes (read at collection time)."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [f"{method.upper()} {path}" for path, item in schema["paths"].items() for method in item]


def _seed(headers: dict[str, str], iso_dirs: IsoDirs, on_commit: Any) -> dict[str, str]:
    """A ready ISO, a template and a running VM, so item operations also reach real objects."""
    from django.test import Client

    client = Client(HTTP_AUTHORIZATION=headers["Authorization"])
    base = "/api/v1/virtualmachines/"
    make_iso(iso_dirs.search[0] / "seed.iso", label="Seed 1.0 amd64")
    with on_commit(execute=True):
        iso = client.post(base + "isos", {"path": str(iso_dirs.search[0] / "seed.iso")}, content_type="application/json")
    assert iso.status_code == 201, iso.content
    template = client.post(base + "templates", {"name": "seed-tpl", "memory": 512, "vcpus": 1}, content_type="application/json")
    assert template.status_code == 201, template.content
    with on_commit(execute=True):
        vm = client.post(base + "create-enhanced", {"name": "seed-vm", "memory": 512, "vcpus": 1}, content_type="application/json")
    assert vm.status_code == 202, vm.content
    return {"iso_id": iso.json()["id"], "name": "seed-tpl", "vm_id": str(vm.json()["id"])}


def _aimed(case: schemathesis.Case, existing: dict[str, str]) -> schemathesis.Case:
    """The same generated request, aimed at a seeded object."""
    params = dict(case.path_parameters or {})
    for key in params:
        if key in existing:
            params[key] = int(existing[key]) if key == "vm_id" else existing[key]
    case.path_parameters = params
    return case


@pytest.mark.parametrize("operation", _operations())
def test_operation_has_no_server_error_and_matches_the_schema(
    operation: str, hv: FakeHypervisor, iso_dirs: IsoDirs, tally: Tally, django_capture_on_commit_callbacks: Any
) -> None:
    admin = AdminFactory.create(username="schemathesis")
    headers = {"Authorization": f"Token {Token.objects.create(user=admin).key}"}
    existing = _seed(headers, iso_dirs, django_capture_on_commit_callbacks)
    schema = schemathesis.openapi.from_wsgi("/api/schema/", application)
    method, path = operation.split(" ", 1)
    api_operation = schema[path][method]
    generated = api_operation.as_strategy()
    strategy = st.one_of(generated, generated.map(lambda case: _aimed(case, existing))) if "{" in path else generated
    failures: list[str] = []
    examples = 0

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        nonlocal examples
        examples += 1
        try:
            case.call_and_validate(headers=headers, checks=CHECKS)
        except Exception as exc:  # a FailureGroup from the checks, or the app's own exception
            failures.append(f"{type(exc).__name__}: {exc}"[:2000])

    run()
    tally.record(SUITE, operation, refused=not failures, detail=f"{examples} examples" + (f"; {failures[0][:300]}" if failures else ""))
    assert not failures, "\n\n".join(failures[:3])

"""The in-memory hypervisor (tests/fakes.py) and the libvirt driver keep the
`Hypervisor` protocol's shape: every method, with the same parameters,
defaults and annotations. A method added to the protocol and forgotten in
the fake fails here, not in a test that happens to call it."""

from __future__ import annotations

import inspect

import pytest

from tests.fakes import FakeHypervisor
from vms.hypervisor import Hypervisor
from vms.hypervisor.libvirt_driver import LibvirtDriver

PROTOCOL_METHODS = sorted(name for name, value in vars(Hypervisor).items() if inspect.isfunction(value) and not name.startswith("_"))


def test_the_protocol_is_read_at_all():
    assert {"define_domain", "console", "close"} <= set(PROTOCOL_METHODS)


@pytest.mark.parametrize("implementation", [FakeHypervisor, LibvirtDriver], ids=["fake", "libvirt"])
@pytest.mark.parametrize("name", PROTOCOL_METHODS)
def test_implementation_has_the_protocols_method_with_its_signature(implementation: type, name: str):
    method = getattr(implementation, name, None)
    assert callable(method), f"{implementation.__name__} has no {name}()"
    assert inspect.signature(method) == inspect.signature(getattr(Hypervisor, name)), f"{implementation.__name__}.{name}"

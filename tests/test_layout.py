"""The packages' import arrows point one way, and every logger is under the configured `vapor` namespace.

Read from the source (no import is executed), so a lazy import inside a
function counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent

# What each first-party package may import besides itself. vaporsite is the project package (settings,
# errors, API plumbing): it names the apps only as strings (INSTALLED_APPS, include()).
MAY_IMPORT = {
    "vaporsite": set(),
    "guestos": {"vaporsite"},
    "isos": {"vaporsite", "guestos"},
    "projects": {"vaporsite"},
    "vms": {"vaporsite", "guestos", "isos", "projects"},
    "dashboard": {"vaporsite", "isos", "vms", "projects"},
}


def _modules(package: str) -> Iterator[Path]:
    yield from sorted((ROOT / package).rglob("*.py"))


def _imported(path: Path) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_a_package_imports_only_the_packages_below_it(package: str) -> None:
    allowed = MAY_IMPORT[package] | {package}
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _modules(package)
        for line, name in _imported(path)
        if name.split(".")[0] in MAY_IMPORT and name.split(".")[0] not in allowed
    ]
    assert wrong == []


def _logger_names(path: Path) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "getLogger":
            first = node.args[0] if node.args else None
            name = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else ast.unparse(first or node)
            yield node.lineno, name


def test_every_logger_is_under_the_configured_vapor_namespace() -> None:
    loggers = settings.LOGGING["loggers"]
    assert isinstance(loggers, dict) and "vapor" in loggers
    outside = [
        f"{path.relative_to(ROOT)}:{line} logs to {name!r}"
        for package in MAY_IMPORT
        for path in _modules(package)
        for line, name in _logger_names(path)
        if name != "vapor" and not name.startswith("vapor.")
    ]
    assert outside == []

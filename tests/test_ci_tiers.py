"""The suite's own gatekeeping hooks (tests/conftest.py), run in an inner pytest session:
under CI a skipped libvirt or browser test fails, and `--db-only` keeps only the tests that use the database."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]

CONFTEST = """
from tests.conftest import pytest_addoption, pytest_collection_modifyitems, pytest_make_collect_report, pytest_runtest_makereport
"""

TESTS = """
import pytest

@pytest.mark.libvirt
def test_daemon_tier():
    pytest.skip("no private network namespace")

@pytest.mark.browser
@pytest.mark.skip(reason="no chromium")
def test_browser_tier():
    pass

def test_plain_skip():
    pytest.skip("nothing to do here")

@pytest.mark.django_db
def test_marked_db():
    pass

def test_db_fixture(db):
    pass

@pytest.mark.postgres
def test_postgres_marked():
    pass

def test_no_database():
    pass
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "vaporsite.settings")
    monkeypatch.delenv("CI", raising=False)
    pytester.makeini("[pytest]\nmarkers =\n  libvirt\n  browser\n  postgres\n")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_tiers=TESTS)
    return pytester


def test_without_ci_the_tiers_may_skip(inner: pytest.Pytester):
    result = inner.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=4, skipped=3)
    result.stdout.fnmatch_lines(["*no private network namespace*"])


def test_under_ci_a_skipped_tier_fails_with_its_reason(inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CI", "true")
    result = inner.runpytest_subprocess("-p", "no:cacheprovider")
    # The libvirt test's own skip (call phase) fails; the browser test's skip marker (setup phase) is an error.
    result.assert_outcomes(passed=4, skipped=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(["*skipped a libvirt test under CI*no private network namespace*"])
    result.stdout.fnmatch_lines(["*skipped a browser test under CI*no chromium*"])
    assert result.ret == 1


def test_db_only_keeps_the_tests_that_use_the_database(inner: pytest.Pytester):
    result = inner.runpytest_subprocess("-p", "no:cacheprovider", "--db-only", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*test_marked_db*", "*test_db_fixture*", "*test_postgres_marked*", "*3/7 tests collected (4 deselected)*"])
    result.stdout.no_fnmatch_line("*test_no_database*")

"""scripts/audit.py's verdict on pip-audit's JSON: a vulnerability found fails (exit 1)
even when other packages could not be checked; an unreachable service is exit 2 (the
scan's warning, or its failure under REQUIRE_AUDIT); all checked and clean is 0."""

from __future__ import annotations

from tests.scripts import load_script

audit = load_script("audit")

CLEAN = {"name": "idna", "version": "3.10", "vulns": []}
SKIPPED = {"name": "grpcio", "version": "1.70.0", "skip_reason": "Dependency not found on PyPI"}
VULNERABLE = {"name": "jinja2", "version": "3.1.2", "vulns": [{"id": "GHSA-h5c8-rqwp-cp95"}]}


def test_every_package_checked_and_clean_passes() -> None:
    code, lines = audit.verdict([CLEAN, CLEAN], "")
    assert code == 0
    assert lines == ["pip-audit checked 2 locked packages: 0 vulnerable"]


def test_an_unreachable_service_is_not_proven_and_says_so() -> None:
    code, lines = audit.verdict([SKIPPED, SKIPPED], "")
    assert code == 2
    assert "could not check 2 of 2 locked packages" in lines[0]
    assert "cannot be reached" in lines[0]


def test_a_vulnerability_fails_even_when_other_packages_were_skipped() -> None:
    code, lines = audit.verdict([VULNERABLE, SKIPPED, CLEAN], "")
    assert code == 1
    assert "jinja2 3.1.2: GHSA-h5c8-rqwp-cp95" in lines
    assert lines[-1] == "pip-audit checked 2 locked packages: 1 vulnerable"


def test_no_result_at_all_is_not_proven() -> None:
    code, lines = audit.verdict([], "ConnectionError: ... pypi.org\n")
    assert code == 2 and "no result" in lines[0] and "pypi.org" in lines[0]

"""Every revert reason of the registry, the market and the court is asserted by at least one test."""

from __future__ import annotations

import re

from tests.contracts.contract_helpers import CONTRACTS, ROOT

TESTS = sorted((ROOT / "tests" / "contracts").glob("test_*.py"))
REASON = re.compile(r'"((?:market|registry|court): [^"]+)"')


def _reasons() -> set[str]:
    found: set[str] = set()
    for name in ("ProviderRegistry.vy", "JobMarket.vy", "VerifierCourt.vy"):
        found |= set(REASON.findall((CONTRACTS / name).read_text()))
    return found


def test_every_revert_reason_is_tested():
    reasons = _reasons()
    assert len(reasons) > 70  # the grep itself works
    tested = "\n".join(p.read_text() for p in TESTS if p.name != "test_revert_coverage.py")
    untested = sorted(r for r in reasons if f'"{r}"' not in tested)
    assert untested == [], f"revert reasons no test asserts: {untested}"

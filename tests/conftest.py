"""Shared fixtures: chains (embedded and anvil) and the requirement gates.

Tests that need anvil or bubblewrap skip with the reason printed on a machine without them; in CI
(``CI`` set) a missing requirement fails the test instead, so nothing is skipped silently there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from marketplace.chain.anvil import Anvil, find_anvil

IN_CI = bool(os.environ.get("CI"))


def require(available: bool, what: str) -> None:
    """Skip (locally) or fail (in CI) when ``what`` is not available."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI but missing", pytrace=False)
    pytest.skip(f"{what} not installed")


@pytest.fixture(scope="session")
def anvil_url() -> Iterator[str]:
    """A fresh anvil node for the test session."""
    require(find_anvil() is not None, "anvil (npm @foundry-rs/anvil-linux-amd64)")
    with Anvil() as node:
        yield node.url


@pytest.fixture(scope="session")
def has_bwrap() -> bool:
    """Whether bubblewrap is installed (required in CI)."""
    available = shutil.which("bwrap") is not None
    require(available, "bubblewrap (apt-get install bubblewrap)")
    return available

"""Shared fixtures: chains (embedded and anvil), the requirement gates and the Hypothesis profiles.

Tests that need anvil or bubblewrap skip with the reason printed on a machine without them; in CI
(``CI`` set) a missing requirement fails the test instead, so nothing is skipped silently there.

Hypothesis runs under one of two profiles, chosen here and nowhere else: ``ci`` (the default when
``CI`` is set) is the thorough one, a fixed reproducible sequence of 200 examples (stateful
machines: 200 runs of 30 steps); ``dev`` (the default otherwise) is a quick local check of a few
examples. ``HYPOTHESIS_PROFILE=ci python -m pytest ...`` runs CI's examples locally. Tests take
the loaded profile and override only what must differ (a health check a machine needs off).

The everyday loop is ``python -m pytest -m "not slow"``: the suites marked ``slow`` (processes on
loopback, anvil, the stateful machines, sandboxed jobs, benchmark replays) run in CI and in a
plain ``python -m pytest``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from hypothesis import settings

from marketplace.chain.anvil import Anvil, find_anvil

IN_CI = bool(os.environ.get("CI"))

settings.register_profile(
    "ci",
    # One fixed, reproducible sequence of examples: a red run can be replayed, and a check that
    # a machine reached its paths cannot flip with the draw.
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    database=None,
    derandomize=True,
)
settings.register_profile(
    "dev",
    max_examples=10,
    stateful_step_count=15,
    deadline=None,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "dev"))


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

"""Fixtures of the verification suite (the market itself is built by chainkit)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from marketplace.chain.client import Chain
from marketplace.contracts.deployment import MarketParameters
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.types import ONE_TOKEN
from tests.verification.chainkit import Market


@pytest.fixture
def market(tmp_path: Path, has_bwrap: bool) -> Iterator[Market]:
    chain = Chain.embedded()
    contracts = setup_dev_market(chain, accounts=8, parameters=MarketParameters(dispute_bond=ONE_TOKEN))
    world = Market(contracts, tmp_path)
    try:
        yield world
    finally:
        world.stop()

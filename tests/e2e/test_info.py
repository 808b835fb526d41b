"""GetInfo tells the truth about a registered provider; permits are signed in the token's own domain."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.requester.client import WorkerClient
from tests.e2e.providerkit import PRICE, PROVIDER, start_provider

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]


def test_get_info__names_the_staked_account_its_receipt_signer_and_the_registered_price(tmp_path: Path) -> None:
    contracts = setup_dev_market(Chain.embedded(), accounts=5)
    provider = start_provider(contracts, tmp_path / "worker", run=False)
    try:
        offer = contracts.registry.offer(dev_account(PROVIDER).address)
        with WorkerClient(offer.endpoint, timeout_s=10) as client:
            info = client.info()
    finally:
        provider.stop()
    assert info.provider_address == dev_account(PROVIDER).address != info.receipt_signer
    assert info.receipt_signer == offer.signer == provider.server.provider_address
    assert [(p.device_kind, int(p.price_per_hour)) for p in info.prices] == [("cpu", PRICE)]


def test_a_permit__is_signed_in_the_domain_the_token_reports_not_from_its_name() -> None:
    contracts = setup_dev_market(Chain.embedded(), accounts=5)
    token = contracts.token
    domain = token.permit_domain()
    assert domain["name"] == "flopex" != token.call("name") == "flopex Compute"
    assert domain["verifyingContract"].lower() == token.address.lower()
    owner, spender = dev_account(2), dev_account(3)
    deadline = int(time.time()) + 3600
    v, r, s = token.sign_permit(owner, spender.address, 12345, deadline)
    token.transact(spender, "permit", owner.address, spender.address, 12345, deadline, v, r, s)
    assert token.call("allowance", owner.address, spender.address) == 12345

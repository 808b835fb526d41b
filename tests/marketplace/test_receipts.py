"""Signed usage receipts."""

from __future__ import annotations

import dataclasses

import pytest
from eth_account import Account

from marketplace.errors import VerificationError
from marketplace.protocol.auth import Domain
from marketplace.protocol.receipts import SignedReceipt, UsageReceipt, sign_receipt, verify_receipt

DOMAIN = Domain(chain_id=31337, verifying_contract="0x" + "cd" * 20)


@pytest.fixture
def provider() -> Account:
    return Account.create()


def _receipt(address: str) -> UsageReceipt:
    return UsageReceipt(
        job_id=9,
        provider=address,
        result_root=b"\x11" * 32,
        device_seconds=3,
        cpu_millis=2500,
        peak_memory_bytes=1 << 28,
        exit_code=-9,
    )


def test_a_receipt__verifies_against_the_worker_address(provider: Account) -> None:
    signed = sign_receipt(provider.key, DOMAIN, _receipt(provider.address))
    assert verify_receipt(DOMAIN, signed, provider.address) == signed.receipt


def test_a_tampered_receipt__fails(provider: Account) -> None:
    signed = sign_receipt(provider.key, DOMAIN, _receipt(provider.address))
    forged = SignedReceipt(dataclasses.replace(signed.receipt, device_seconds=3600), signed.signature)
    with pytest.raises(VerificationError, match="signed by"):
        verify_receipt(DOMAIN, forged, provider.address)


def test_a_receipt_checked_against_another_worker__fails(provider: Account) -> None:
    signed = sign_receipt(provider.key, DOMAIN, _receipt(provider.address))
    with pytest.raises(VerificationError):
        verify_receipt(DOMAIN, signed, Account.create().address)


def test_signing_a_receipt_for_another_provider__is_refused(provider: Account) -> None:
    with pytest.raises(VerificationError, match="not the signing key"):
        sign_receipt(provider.key, DOMAIN, _receipt(Account.create().address))

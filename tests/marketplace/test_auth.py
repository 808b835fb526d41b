"""EIP-712 request signatures."""

from __future__ import annotations

import time

import pytest
from eth_account import Account

from marketplace.errors import SignatureError
from marketplace.protocol.auth import Domain, payload_digest, recover_request_signer, sign_request, verify_request

MARKET = "0x" + "ab" * 20


@pytest.fixture
def domain() -> Domain:
    return Domain(chain_id=31337, verifying_contract=MARKET)


@pytest.fixture
def requester() -> Account:
    return Account.create()


def test_a_signed_request__recovers_to_its_signer(domain: Domain, requester: Account) -> None:
    digest = payload_digest("StartJob", seed=7)
    req = sign_request(requester.key, domain, 5, "StartJob", digest)
    assert recover_request_signer(domain, req) == requester.address
    verify_request(domain, req, expected_signer=requester.address, method="StartJob", job_id=5, digest=digest)


def test_a_request_signed_by_a_stranger__is_refused(domain: Domain, requester: Account) -> None:
    digest = payload_digest("CancelJob")
    req = sign_request(Account.create().key, domain, 5, "CancelJob", digest)
    with pytest.raises(SignatureError, match="not by the job's requester"):
        verify_request(domain, req, expected_signer=requester.address, method="CancelJob", job_id=5, digest=digest)


def test_an_expired_request__is_refused(domain: Domain, requester: Account) -> None:
    digest = payload_digest("CancelJob")
    req = sign_request(requester.key, domain, 5, "CancelJob", digest, expiry=int(time.time()) - 1)
    with pytest.raises(SignatureError, match="expired"):
        verify_request(domain, req, expected_signer=requester.address, method="CancelJob", job_id=5, digest=digest)


def test_a_request_far_in_the_future__is_refused(domain: Domain, requester: Account) -> None:
    digest = payload_digest("CancelJob")
    req = sign_request(requester.key, domain, 5, "CancelJob", digest, expiry=int(time.time()) + 10**6)
    with pytest.raises(SignatureError, match="ahead"):
        verify_request(domain, req, expected_signer=requester.address, method="CancelJob", job_id=5, digest=digest)


@pytest.mark.parametrize("field", ["method", "job_id", "digest"])
def test_a_signature_for_something_else__is_refused(domain: Domain, requester: Account, field: str) -> None:
    digest = payload_digest("StartJob", seed=1)
    req = sign_request(requester.key, domain, 5, "StartJob", digest)
    kwargs = {"method": "StartJob", "job_id": 5, "digest": digest}
    kwargs[field] = {"method": "CancelJob", "job_id": 6, "digest": payload_digest("StartJob", seed=2)}[field]
    with pytest.raises(SignatureError):
        verify_request(domain, req, expected_signer=requester.address, **kwargs)  # type: ignore[arg-type]


def test_a_signature_in_another_domain__recovers_to_someone_else(domain: Domain, requester: Account) -> None:
    digest = payload_digest("GetJob")
    req = sign_request(requester.key, Domain(1, MARKET), 5, "GetJob", digest)
    assert recover_request_signer(domain, req) != requester.address


def test_a_malformed_signature__raises_signature_error(domain: Domain, requester: Account) -> None:
    req = sign_request(requester.key, domain, 5, "GetJob", payload_digest("GetJob"))
    bad = type(req)(req.job_id, req.method, req.payload_digest, req.nonce, req.expiry, b"\x00" * 65)
    with pytest.raises(SignatureError):
        recover_request_signer(domain, bad)


def test_upload_digest__is_the_archive_hash() -> None:
    sha = bytes(range(32))
    assert payload_digest("UploadBundle", archive_sha256=sha) == sha
    with pytest.raises(SignatureError):
        payload_digest("UploadBundle")

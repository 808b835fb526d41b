"""EIP-712 signatures on requests to a worker.

Every job request a requester sends to a worker carries a signature, by the requester's key,
of this typed structure::

    JobRequest(uint256 jobId, string method, bytes32 payloadDigest, uint256 nonce, uint64 expiry)

under the domain ``{name: "flopex-worker", version: "1", chainId, verifyingContract}`` where
``verifyingContract`` is the market contract's address. ``payloadDigest`` is the sha256 of the
request's payload as :func:`payload_digest` defines it for each method; ``nonce`` is a random
256-bit number never used twice; ``expiry`` is a unix time in seconds after which the worker
refuses the request. The worker recovers the signer, compares it with the lease's requester,
and records the nonce so the same signed request cannot be played again.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.address import is_address, to_checksum_address

from marketplace.errors import SignatureError

__all__ = [
    "DEFAULT_TTL_S",
    "DOMAIN_NAME",
    "DOMAIN_VERSION",
    "METHODS",
    "Domain",
    "SignedRequest",
    "payload_digest",
    "recover_request_signer",
    "sign_request",
    "verify_request",
]

DOMAIN_NAME: Final = "flopex-worker"
DOMAIN_VERSION: Final = "1"
DEFAULT_TTL_S: Final = 300
"""How long a request signed by :func:`sign_request` stays valid by default, in seconds."""

METHODS: Final = frozenset(
    {"UploadBundle", "QueryUpload", "StartJob", "WatchJob", "DownloadResults", "DownloadBundle", "CancelJob", "GetJob"}
    | {"PutDataset", "QueryDataset", "ListDatasets", "DatasetFromJob", "DownloadDataset"}
)
"""The rpc names a request signature may name (the dataset ones: see marketplace/protocol/datasets.py)."""

_DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
_REQUEST_TYPE = [
    {"name": "jobId", "type": "uint256"},
    {"name": "method", "type": "string"},
    {"name": "payloadDigest", "type": "bytes32"},
    {"name": "nonce", "type": "uint256"},
    {"name": "expiry", "type": "uint64"},
]


@dataclass(frozen=True, slots=True)
class Domain:
    """The EIP-712 domain shared by request signatures and usage receipts."""

    chain_id: int
    verifying_contract: str

    def __post_init__(self) -> None:
        if not is_address(self.verifying_contract):
            raise SignatureError(f"auth: not an address: {self.verifying_contract!r}")
        object.__setattr__(self, "verifying_contract", to_checksum_address(self.verifying_contract))

    def as_dict(self) -> dict[str, Any]:
        """Return the domain as EIP-712 ``domain`` data."""
        return {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": self.chain_id,
            "verifyingContract": self.verifying_contract,
        }

    def typed_data(self, primary: str, fields: list[dict[str, str]], message: dict[str, Any]) -> dict[str, Any]:
        """Return a full EIP-712 document of type ``primary`` in this domain."""
        return {
            "types": {"EIP712Domain": _DOMAIN_TYPE, primary: fields},
            "primaryType": primary,
            "domain": self.as_dict(),
            "message": message,
        }


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """The signed part of a request: what was signed and the 65-byte signature."""

    job_id: int
    method: str
    payload_digest: bytes
    nonce: int
    expiry: int
    signature: bytes


def payload_digest(method: str, *, archive_sha256: bytes | None = None, seed: int | None = None) -> bytes:
    """Return the payload digest a request for ``method`` signs.

    - ``UploadBundle`` and ``QueryUpload``: the sha256 of the whole bundle archive, as given;
    - ``StartJob``: sha256 of the job's seed as 8 big-endian bytes;
    - every other method: sha256 of the empty string.
    """
    if method in ("UploadBundle", "QueryUpload"):
        if archive_sha256 is None or len(archive_sha256) != 32:
            raise SignatureError(f"auth: {method} signs the archive's 32-byte sha256")
        return archive_sha256
    if method == "StartJob":
        if seed is None or not 0 <= seed < 1 << 64:
            raise SignatureError("auth: StartJob signs a seed between 0 and 2**64-1")
        return hashlib.sha256(seed.to_bytes(8, "big")).digest()
    return hashlib.sha256(b"").digest()


def _document(domain: Domain, req: SignedRequest | tuple[int, str, bytes, int, int]) -> dict[str, Any]:
    if isinstance(req, SignedRequest):
        job_id, method, digest = req.job_id, req.method, req.payload_digest
        nonce, expiry = req.nonce, req.expiry
    else:
        job_id, method, digest, nonce, expiry = req
    return domain.typed_data(
        "JobRequest",
        _REQUEST_TYPE,
        {"jobId": job_id, "method": method, "payloadDigest": digest, "nonce": nonce, "expiry": expiry},
    )


def sign_request(
    private_key: bytes | str,
    domain: Domain,
    job_id: int,
    method: str,
    digest: bytes,
    *,
    nonce: int | None = None,
    expiry: int | None = None,
    ttl_s: int = DEFAULT_TTL_S,
) -> SignedRequest:
    """Sign a request for ``method`` on job ``job_id``; a fresh random nonce unless one is given."""
    if method not in METHODS:
        raise SignatureError(f"auth: unknown method {method!r}")
    if len(digest) != 32:
        raise SignatureError("auth: the payload digest must be 32 bytes")
    nonce = secrets.randbits(256) if nonce is None else nonce
    expiry = int(time.time()) + ttl_s if expiry is None else expiry
    doc = _document(domain, (job_id, method, digest, nonce, expiry))
    signed = Account.sign_message(encode_typed_data(full_message=doc), private_key)
    return SignedRequest(job_id, method, digest, nonce, expiry, bytes(signed.signature))


def recover_request_signer(domain: Domain, req: SignedRequest) -> str:
    """Return the checksummed address that signed ``req``; raise :class:`SignatureError` if malformed."""
    if len(req.signature) != 65:
        raise SignatureError("auth: a signature is 65 bytes")
    if len(req.payload_digest) != 32 or not 0 <= req.nonce < 1 << 256 or not 0 <= req.expiry < 1 << 64:
        raise SignatureError("auth: malformed signed fields")
    if not 0 <= req.job_id < 1 << 256:
        raise SignatureError("auth: job id out of range")
    try:
        signer = Account.recover_message(
            encode_typed_data(full_message=_document(domain, req)), signature=req.signature
        )
    except Exception as exc:  # eth-keys raises several unrelated types for bad signatures
        raise SignatureError(f"auth: invalid signature: {exc}") from None
    return str(signer)


def verify_request(
    domain: Domain,
    req: SignedRequest,
    *,
    expected_signer: str,
    method: str,
    job_id: int,
    digest: bytes,
    now: float | None = None,
    max_ttl_s: int = 3600,
) -> None:
    """Check a request signature; raise :class:`SignatureError` saying why it is refused.

    Checks the method, job id and payload digest it signs against what the request carries,
    that it has not expired and does not reach more than ``max_ttl_s`` into the future, and
    that ``expected_signer`` signed it. Nonce replay is the caller's check (it needs storage).
    """
    now = time.time() if now is None else now
    if req.method != method:
        raise SignatureError(f"auth: signature is for {req.method}, not {method}")
    if req.job_id != job_id:
        raise SignatureError(f"auth: signature is for job {req.job_id}, not job {job_id}")
    if req.payload_digest != digest:
        raise SignatureError("auth: signature does not cover this payload")
    if req.expiry < now:
        raise SignatureError(f"auth: signature expired at {req.expiry}")
    if req.expiry > now + max_ttl_s:
        raise SignatureError(f"auth: signature expiry is more than {max_ttl_s} s ahead")
    signer = recover_request_signer(domain, req)
    if signer.lower() != expected_signer.lower():
        raise SignatureError(f"auth: signed by {signer}, not by the job's requester {expected_signer}")

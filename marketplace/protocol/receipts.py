"""Signed usage receipts: what a worker says a job consumed, verifiable by anyone.

At the end of a job the worker signs, with its receipt key, this EIP-712 structure in the same
domain as request signatures (name ``flopex-worker``, version ``1``, chain id, market contract)::

    UsageReceipt(uint256 jobId, address provider, bytes32 resultRoot, uint64 deviceSeconds,
                 uint64 cpuMillis, uint64 peakMemoryBytes, int32 exitCode)

- ``deviceSeconds``: whole seconds the job held its devices times their count, rounded *up*
  (the unit of GPU-seconds on chain);
- ``cpuMillis``: CPU time (user + system) of the job's whole process tree, in milliseconds;
- ``peakMemoryBytes``: the tree's peak resident memory;
- ``exitCode``: the entrypoint's exit status, or minus the signal number that ended it;
- ``provider``: the address of the key that signs the receipt (the worker's receipt key).

Anyone holding the receipt and the worker's address can check it with :func:`verify_receipt`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.address import to_checksum_address

from marketplace.errors import VerificationError
from marketplace.protocol.auth import Domain

__all__ = ["SignedReceipt", "UsageReceipt", "recover_receipt_signer", "sign_receipt", "verify_receipt"]

_RECEIPT_TYPE = [
    {"name": "jobId", "type": "uint256"},
    {"name": "provider", "type": "address"},
    {"name": "resultRoot", "type": "bytes32"},
    {"name": "deviceSeconds", "type": "uint64"},
    {"name": "cpuMillis", "type": "uint64"},
    {"name": "peakMemoryBytes", "type": "uint64"},
    {"name": "exitCode", "type": "int32"},
]


@dataclass(frozen=True, slots=True)
class UsageReceipt:
    """The metered usage of one job, as the worker signs it (units in the module docstring)."""

    job_id: int
    provider: str
    result_root: bytes
    device_seconds: int
    cpu_millis: int
    peak_memory_bytes: int
    exit_code: int

    def message(self) -> dict[str, Any]:
        """Return the EIP-712 ``message`` of this receipt."""
        return {
            "jobId": self.job_id,
            "provider": to_checksum_address(self.provider),
            "resultRoot": self.result_root,
            "deviceSeconds": self.device_seconds,
            "cpuMillis": self.cpu_millis,
            "peakMemoryBytes": self.peak_memory_bytes,
            "exitCode": self.exit_code,
        }

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-friendly dict (the root as 0x-hex)."""
        data = asdict(self)
        data["result_root"] = "0x" + self.result_root.hex()
        return data


@dataclass(frozen=True, slots=True)
class SignedReceipt:
    """A usage receipt and the worker's 65-byte signature over it."""

    receipt: UsageReceipt
    signature: bytes


def _signable(domain: Domain, receipt: UsageReceipt) -> Any:
    return encode_typed_data(full_message=domain.typed_data("UsageReceipt", _RECEIPT_TYPE, receipt.message()))


def sign_receipt(private_key: bytes | str, domain: Domain, receipt: UsageReceipt) -> SignedReceipt:
    """Sign ``receipt``; its ``provider`` must be the address of ``private_key``."""
    account = Account.from_key(private_key)
    if account.address.lower() != receipt.provider.lower():
        raise VerificationError(f"receipts: provider {receipt.provider} is not the signing key {account.address}")
    signed = account.sign_message(_signable(domain, receipt))
    return SignedReceipt(receipt, bytes(signed.signature))


def recover_receipt_signer(domain: Domain, signed: SignedReceipt) -> str:
    """Return the address that signed the receipt."""
    try:
        return str(Account.recover_message(_signable(domain, signed.receipt), signature=signed.signature))
    except Exception as exc:  # eth-keys raises several unrelated types for bad signatures
        raise VerificationError(f"receipts: invalid signature: {exc}") from None


def verify_receipt(domain: Domain, signed: SignedReceipt, provider: str) -> UsageReceipt:
    """Check that ``provider`` signed the receipt and is the provider it names; return the receipt."""
    signer = recover_receipt_signer(domain, signed)
    if signer.lower() != provider.lower():
        raise VerificationError(f"receipts: signed by {signer}, not by the worker {provider}")
    if signed.receipt.provider.lower() != provider.lower():
        raise VerificationError(f"receipts: receipt names provider {signed.receipt.provider}, not {provider}")
    return signed.receipt

"""Errors raised by flopex.

Every error flopex raises derives from :class:`FlopexError`; each also mixes in the
stdlib class that fits it, so callers can catch either family::

    FlopexError
    ├── ConfigError (ValueError)            bad settings, missing deployment file, bad flag value
    ├── ChainError (RuntimeError)           the chain could not be reached or answered oddly
    │   └── ContractRevert                  a transaction or call reverted; ``.reason`` holds why
    ├── BundleError (ValueError)            a job bundle is malformed, unsafe or too large
    ├── SignatureError (PermissionError)    a signature is malformed, foreign, expired or replayed
    ├── VerificationError (RuntimeError)    a result failed a check (hash, Merkle root, tolerance)
    ├── WorkerError (RuntimeError)          a worker refused or failed a request
    │   └── SandboxError                    the sandbox could not be set up or was escaped
    └── KeystoreError (ValueError)          an account file could not be read or decrypted
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "ChainError",
    "ConfigError",
    "ContractRevert",
    "FlopexError",
    "KeystoreError",
    "SandboxError",
    "SignatureError",
    "VerificationError",
    "WorkerError",
]


class FlopexError(Exception):
    """Raised for any error of flopex's own; the root of the tree above."""


class ConfigError(FlopexError, ValueError):
    """Raised when a setting, flag value or deployment file is missing or invalid."""


class ChainError(FlopexError, RuntimeError):
    """Raised when the chain cannot be reached or gives an unexpected answer."""


class ContractRevert(ChainError):
    """Raised when a transaction or call reverts; ``reason`` is the revert reason string."""

    def __init__(self, reason: str, *, function: str | None = None, data: bytes | None = None) -> None:
        self.reason = reason
        self.function = function
        self.data = data
        where = f"{function}: " if function else ""
        super().__init__(f"{where}reverted: {reason}")


class BundleError(FlopexError, ValueError):
    """Raised when a job bundle is malformed, unsafe (paths escaping it, links) or too large."""


class SignatureError(FlopexError, PermissionError):
    """Raised when a signature is malformed, signed by the wrong key, expired or replayed."""


class VerificationError(FlopexError, RuntimeError):
    """Raised when a result fails a check: a file hash, a Merkle root, a tolerance."""


class WorkerError(FlopexError, RuntimeError):
    """Raised when a worker refuses or fails a request; ``code`` names the gRPC status if any."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        self.message = message
        self.code = code
        super().__init__(message if code is None else f"{code}: {message}")


class SandboxError(WorkerError):
    """Raised when the sandbox cannot be set up, or a job is refused for want of one."""


class KeystoreError(FlopexError, ValueError):
    """Raised when an encrypted account file cannot be read or its password is wrong."""

"""flopex: a decentralized marketplace for GPU compute (the protocol library)."""

from marketplace.errors import (
    BundleError,
    ChainError,
    ConfigError,
    ContractRevert,
    FlopexError,
    KeystoreError,
    SandboxError,
    SignatureError,
    VerificationError,
    WorkerError,
)

__version__ = "0.1.0"

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
    "__version__",
]

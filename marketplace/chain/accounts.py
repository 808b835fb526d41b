"""Accounts: encrypted keystores (Web3 Secret Storage v3, as geth and Foundry write them).

Keys live in a keystore directory, one JSON file per key named as geth names them
(``UTC--<time>--<address>``), so ``cast wallet`` and geth read them and flopex reads theirs. A
password comes from a file, an environment variable or a prompt; a wrong one is a
:class:`~marketplace.errors.KeystoreError`, never a traceback.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import is_address, to_checksum_address

from marketplace.errors import KeystoreError

__all__ = ["Keystore", "read_password"]

PASSWORD_ENV = "FLOPEX_PASSWORD"


def read_password(password_file: Path | None = None, *, env: str = PASSWORD_ENV) -> str | None:
    """The password from ``password_file`` (first line) or the environment; None when neither has one."""
    if password_file is not None:
        try:
            lines = password_file.read_text().splitlines()
        except OSError as exc:
            raise KeystoreError(f"cannot read the password file {password_file}: {exc.strerror}") from exc
        return lines[0] if lines else ""
    return os.environ.get(env)


class Keystore:
    """A directory of encrypted keys."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def addresses(self) -> list[str]:
        """Addresses of the keys in the store, sorted."""
        return sorted(self._files())

    def _files(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        if not self.directory.is_dir():
            return found
        for path in self.directory.iterdir():
            if not path.is_file():
                continue
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            address = data.get("address") if isinstance(data, dict) else None
            if isinstance(address, str) and is_address("0x" + address.removeprefix("0x")):
                found[to_checksum_address("0x" + address.removeprefix("0x"))] = path
        return found

    def _write(self, account: LocalAccount, password: str, *, kdf: Literal["pbkdf2", "scrypt"] = "scrypt") -> Path:
        if not password:
            raise KeystoreError("an empty password would leave the key unprotected")
        if account.address in self._files():
            raise KeystoreError(f"{account.address} is already in the keystore")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%S.%fZ")
        path = self.directory / f"UTC--{stamp}--{account.address[2:].lower()}"
        data = Account.encrypt(account.key, password, kdf=kdf)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        return path

    def new(self, password: str) -> LocalAccount:
        """Create a random key, store it encrypted, and return it."""
        account: LocalAccount = Account.create()
        self._write(account, password)
        return account

    def import_key(self, private_key: str, password: str) -> LocalAccount:
        """Store an existing private key (hex) encrypted."""
        try:
            account: LocalAccount = Account.from_key(private_key.strip())
        except Exception as exc:  # eth-account raises several types for bad keys
            raise KeystoreError("not a valid private key (expected 32 bytes of hex)") from exc
        self._write(account, password)
        return account

    def import_file(self, path: Path, password: str) -> LocalAccount:
        """Copy a geth or Foundry keystore file into the store, checking its password."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise KeystoreError(f"{path} is not a keystore file") from exc
        account = self._decrypt(data, password, str(path))
        if account.address in self._files():
            raise KeystoreError(f"{account.address} is already in the keystore")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.directory / path.name
        target.write_text(json.dumps(data))
        target.chmod(0o600)
        return account

    def unlock(self, address: str, password: str) -> LocalAccount:
        """Decrypt the key of ``address``."""
        if not is_address(address):
            raise KeystoreError(f"not an address: {address!r}")
        path = self._files().get(to_checksum_address(address))
        if path is None:
            raise KeystoreError(f"no key for {address} in {self.directory}")
        return self._decrypt(json.loads(path.read_text()), password, str(path))

    @staticmethod
    def _decrypt(data: object, password: str, where: str) -> LocalAccount:
        try:
            key = Account.decrypt(data, password)  # type: ignore[arg-type]
        except ValueError as exc:
            if "MAC mismatch" in str(exc):
                raise KeystoreError(f"wrong password for {where}") from exc
            raise KeystoreError(f"{where} is not a keystore file: {exc}") from exc
        except (KeyError, TypeError) as exc:
            raise KeystoreError(f"{where} is not a keystore file") from exc
        account: LocalAccount = Account.from_key(key)
        return account

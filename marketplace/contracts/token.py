"""Binding of the compute token (``contracts/ComputeToken.vy``): ERC-20 with EIP-2612 permit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eth_account.signers.local import LocalAccount

from marketplace.contracts.base import Bound
from marketplace.types import (
    TokenAmount,
)

if TYPE_CHECKING:
    pass

__all__ = ["Token"]


class Token(Bound):
    """The compute token (ERC-20 with permit)."""

    NAME = "ComputeToken"

    def balance_of(self, account: str) -> TokenAmount:
        """Tokens held by ``account``."""
        return TokenAmount(self.call("balanceOf", account))

    def allowance(self, owner: str, spender: str) -> int:
        """What ``spender`` may still take from ``owner``."""
        return int(self.call("allowance", owner, spender))

    def approve(self, account: LocalAccount, spender: str, amount: int) -> Any:
        """Let ``spender`` take ``amount`` of ``account``'s tokens."""
        return self.transact(account, "approve", spender, amount)

    def transfer(self, account: LocalAccount, to: str, amount: int) -> Any:
        """Send ``amount`` tokens to ``to``."""
        return self.transact(account, "transfer", to, amount)

    def mint(self, minter: LocalAccount, to: str, amount: int) -> Any:
        """Create ``amount`` tokens for ``to`` (minters only: the faucet on dev chains)."""
        return self.transact(minter, "mint", to, amount)

    def nonces(self, owner: str) -> int:
        """The owner's EIP-2612 permit nonce."""
        return int(self.call("nonces", owner))

    def total_supply(self) -> int:
        """All tokens in existence."""
        return int(self.call("totalSupply"))

    def permit_domain(self) -> dict[str, Any]:
        """The EIP-712 domain ``permit`` checks, as the token itself reports it (ERC-5267 ``eip712Domain()``).

        The token's domain name ("flopex") is not its ERC-20 ``name()`` ("flopex Compute"): a permit
        built from ``name()`` recovers the wrong signer and reverts. Read the domain, never guess it.
        """
        _fields, name, version, chain_id, contract, _salt, _extensions = self.call("eip712Domain")
        return {"name": name, "version": version, "chainId": int(chain_id), "verifyingContract": contract}

    def sign_permit(self, owner: LocalAccount, spender: str, amount: int, deadline: int) -> tuple[int, bytes, bytes]:
        """Sign an EIP-2612 permit in the token's own EIP-712 domain (:meth:`permit_domain`); returns ``(v, r, s)``."""
        domain = self.permit_domain()
        types = {
            "Permit": [
                {"name": "owner", "type": "address"},
                {"name": "spender", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ]
        }
        message = {
            "owner": owner.address,
            "spender": spender,
            "value": amount,
            "nonce": self.nonces(owner.address),
            "deadline": deadline,
        }
        signed = owner.sign_typed_data(domain, types, message)
        return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")

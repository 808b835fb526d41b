"""The base of every contract binding: a contract's compiled artifact and its address on a chain.

:class:`Bound` holds the chain, the address and the web3 contract object; its :meth:`Bound.call`
and :meth:`Bound.transact` reach any function of the ABI (bindings wrap them in typed methods),
and it decodes the contract's events from receipts and logs.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from marketplace.chain.client import Chain
from marketplace.contracts import events as ev
from marketplace.errors import ConfigError

if TYPE_CHECKING:
    pass

__all__ = ["artifact"]


@cache
def artifact(name: str) -> dict[str, Any]:
    """The compiled artifact (ABI, bytecode) of contract ``name``, as built by ``marketplace.contracts.build``."""
    try:
        text = resources.files("marketplace.contracts.artifacts").joinpath(f"{name}.json").read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"no artifact for {name}; run `python -m marketplace.contracts.build`") from exc
    data: dict[str, Any] = json.loads(text)
    return data


class Bound:
    """A contract bound to a chain."""

    NAME = ""

    def __init__(self, chain: Chain, address: str) -> None:
        self.chain = chain
        self.address = to_checksum_address(address)
        self.contract = chain.w3.eth.contract(address=self.address, abi=artifact(self.NAME)["abi"])

    def call(self, name: str, *args: Any) -> Any:
        return self.chain.call(getattr(self.contract.functions, name)(*args), function=name)

    def transact(self, account: LocalAccount, name: str, *args: Any) -> Any:
        return self.chain.transact(account, getattr(self.contract.functions, name)(*args), function=name)

    def change_id(self, name: str, *args: Any) -> bytes:
        """The id an owner's delayed change is queued under: keccak256 of the calldata that makes it."""
        return bytes(keccak(hexstr=self.contract.encode_abi(name, args=list(args))))

    def queue_change(self, owner: LocalAccount, name: str, *args: Any) -> int:
        """Announce the owner's call ``name(*args)``; returns the earliest time it can be made."""
        change = self.change_id(name, *args)
        self.transact(owner, "queue_change", change)
        return int(self.call("queued_changes", change))

    def change_ready_at(self, name: str, *args: Any) -> int:
        """When a queued change ``name(*args)`` can be made; 0 when it is not queued."""
        return int(self.call("queued_changes", self.change_id(name, *args)))

    def logs_in(self, receipt: Any) -> list[Any]:
        """This contract's logs in a transaction receipt, decoded by web3 (event name, args, block)."""
        found = []
        events = self.contract.all_events()
        for log in receipt["logs"]:
            if to_checksum_address(log["address"]) != self.address:
                continue
            for event in events:
                try:
                    found.append(event.process_log(log))
                except Exception:
                    continue
                break
        return found

    def events_in(self, receipt: Any) -> list[ev.ChainEvent]:
        """Decode this contract's events in a transaction receipt."""
        return [item for item in map(ev.decode, self.logs_in(receipt)) if item is not None]

    def get_events(self, name: str, from_block: int = 0, **filters: Any) -> list[Any]:
        """Decoded events ``name`` since ``from_block``, filtered on indexed arguments."""
        with self.chain.locked():
            logs = getattr(self.contract.events, name)().get_logs(
                from_block=from_block, argument_filters=filters or None
            )
        return [e for e in (ev.decode(log) for log in logs) if e is not None]

"""The chain client: one connection to an EVM chain, signed transactions, one revert error.

A :class:`Chain` talks either to the embedded chain (eth-tester on py-evm, in this process, no
set-up) or to any Ethereum JSON-RPC node (``--rpc-url``: anvil, a ``flopex chain up`` node, a
testnet). Transactions are signed locally with the sender's key and sent raw, so both behave the
same. A revert surfaces as :class:`~marketplace.errors.ContractRevert` with the contract's reason,
whether the node is eth-tester (``TransactionFailed``) or a JSON-RPC node (``ContractLogicError``).

Gas limits are the node's estimate with a margin (:func:`gas_limit`): an estimate is made on the
state before the block, and a transaction mined after another in the same block (two providers
taking the two slots of one instant job) may need more, the last take leasing the job. One that
still runs out of gas is sent again, estimated afresh, with at least twice the limit it had.

All access to the connection goes through one lock: the embedded chain is not thread-safe, and a
single lock keeps each account's nonces in order when several threads share a client.

Whoever waits for the chain to move (a daemon between steps, a requester waiting for its lease or
a commitment) is woken by a new block rather than polling on a fixed interval:
:meth:`Chain.add_block_listener` and :meth:`Chain.wait_for_block`. On the embedded chain every
block is made through this client, which tells its listeners at once; on a JSON-RPC node one
watcher thread per client asks for the block number, every ``BLOCK_POLL_MIN_S`` for a while after
a new block and backing off to ``BLOCK_POLL_MAX_S`` while the chain is quiet, and only while
someone listens.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3 import Web3
from web3.exceptions import ContractLogicError, TimeExhausted

from marketplace.errors import ChainError, ConfigError, ContractRevert, FlopexError

__all__ = [
    "DEFAULT_GAS_PRICE_CAP",
    "Chain",
    "dev_account",
    "gas_limit",
    "map_revert",
    "one_pass_gas_estimate",
    "sync_tester_clock",
]

T = TypeVar("T")

#: Ether given to each development account on a dev chain.
DEV_ETHER = 1_000 * 10**18
#: Highest fee per gas the client will offer on any chain (a guard against runaway fees).
DEFAULT_GAS_PRICE_CAP = 500 * 10**9

#: Margin on estimated gas: limit = estimate x 5/4 + 25,000 (capped at the block's gas limit).
GAS_MARGIN = (5, 4)
GAS_EXTRA = 25_000
#: Times a transaction that ran out of gas is sent again, each with at least twice the last limit.
OUT_OF_GAS_RETRIES = 2

#: How often a client's block watcher asks a JSON-RPC node for its block number: every
#: ``BLOCK_POLL_MIN_S`` right after a new block, backing off by ``BLOCK_POLL_BACKOFF`` to ``BLOCK_POLL_MAX_S``.
BLOCK_POLL_MIN_S = 0.05
BLOCK_POLL_MAX_S = 0.25
BLOCK_POLL_BACKOFF = 1.5

_REASON = re.compile(r"execution reverted:?\s*(.*)", re.DOTALL)


def sync_tester_clock(tester: Any) -> bool:
    """Bring an eth-tester chain's clock up to the wall clock; returns whether it mined a block.

    eth-tester stamps its pending block when the previous block is mined, so on an idle chain the
    next transaction would see an old time and a deadline that has passed would not have, for it.
    When the pending block is behind the wall clock, an empty block is mined at the wall clock.
    """
    now = int(time.time())
    if tester.get_block_by_number("pending")["timestamp"] < now:
        tester.time_travel(now)
        return True
    return False


def one_pass_gas_estimate(state: Any, transaction: Any) -> int:
    """py-evm gas estimator that runs a transaction once, at the block's gas limit: the gas it needs.

    py-evm's default estimator searches for the smallest limit that does not run out of gas, about
    thirteen runs of the transaction for each estimate; on the embedded chain that was most of the
    time a transaction took. One run's gas before refunds (what the transaction's peak use needs) is
    the estimate; :func:`gas_limit`'s margin covers the 1/64 of gas each call keeps back, and a
    transaction that still runs out is sent again with twice the limit (:meth:`Chain.transact`).
    A transaction that fails raises the VM's error, as the default estimator does.
    """
    from eth.vm.spoof import SpoofTransaction

    at_limit = SpoofTransaction(transaction, gas=state.gas_limit, gas_price=0)
    snapshot = state.snapshot()
    try:
        computation = state.apply_transaction(at_limit)
        if computation.is_error:
            raise computation.error
        return int(state.gas_limit - computation.get_gas_remaining())
    finally:
        state.revert(snapshot)


def gas_limit(estimate: int, block_limit: int | None = None) -> int:
    """The gas limit to send with a transaction the node estimated at ``estimate``: with a margin."""
    limit = estimate * GAS_MARGIN[0] // GAS_MARGIN[1] + GAS_EXTRA
    return min(limit, block_limit) if block_limit else limit


def _out_of_gas(receipt: Any, limit: int) -> bool:
    """True when a failed transaction used (nearly) all its gas: it ran out rather than reverted."""
    return int(receipt["gasUsed"]) * 64 >= limit * 63


def dev_account(index: int) -> LocalAccount:
    """The ``index``-th development account: a key derived from a public seed.

    Every process derives the same keys, so ``flopex chain up``, providers and requesters on a dev
    chain agree on who is who without sharing files. Never hold real value with these keys.
    """
    if index < 0:
        raise ConfigError(f"dev account index must be >= 0, got {index}")
    account: LocalAccount = Account.from_key(keccak(text=f"flopex-dev-account-{index}"))
    return account


def _reason_of(exc: BaseException) -> str | None:
    """The revert reason carried by an eth-tester or web3 exception, or None if it is no revert."""
    name = type(exc).__name__
    text = str(getattr(exc, "message", None) or (exc.args[0] if exc.args else "") or exc)
    if isinstance(exc, ContractLogicError) or name == "TransactionFailed":
        match = _REASON.search(text)
        reason = match.group(1) if match else text
        return reason.strip().strip("'\"") or "reverted without a reason"
    if "execution reverted" in text:
        match = _REASON.search(text)
        return (match.group(1) if match else text).strip().strip("'\"") or "reverted without a reason"
    return None


def map_revert(exc: BaseException, function: str | None = None) -> ChainError:
    """Turn a node's exception into :class:`ContractRevert` (a revert) or :class:`ChainError`."""
    reason = _reason_of(exc)
    if reason is not None:
        return ContractRevert(reason, function=function)
    return ChainError(f"{function + ': ' if function else ''}{type(exc).__name__}: {exc}")


class Chain:
    """A connection to one chain, with locally signed transactions and mapped reverts."""

    def __init__(self, w3: Web3, *, embedded_tester: Any | None = None, url: str | None = None) -> None:
        self.w3 = w3
        self.url = url
        self._tester = embedded_tester
        self._lock = threading.RLock()
        self._nonces: dict[str, int] = {}
        self._gas_cap: int | None = None
        self.chain_id: int = w3.eth.chain_id
        # New blocks: a counter bumped for each one this client learns of, and who to tell.
        self._blocks = threading.Condition()
        self._blocks_seen = 0
        self._listeners: list[Callable[[], None]] = []
        self._watcher: threading.Thread | None = None
        backend_chain = getattr(getattr(embedded_tester, "backend", None), "chain", None)
        if backend_chain is not None and hasattr(backend_chain, "gas_estimator"):
            backend_chain.gas_estimator = one_pass_gas_estimate

    # ------------------------------------------------------------------ constructors

    @classmethod
    def embedded(cls) -> Chain:
        """A fresh in-process chain (eth-tester on py-evm)."""
        from eth_tester import EthereumTester, PyEVMBackend
        from web3 import EthereumTesterProvider

        tester = EthereumTester(PyEVMBackend())
        return cls(Web3(EthereumTesterProvider(tester)), embedded_tester=tester)

    @classmethod
    def connect(cls, rpc_url: str, *, timeout: float = 10.0) -> Chain:
        """Connect to a JSON-RPC node; raises :class:`ChainError` if nothing answers there."""
        if not re.match(r"^(https?|wss?)://", rpc_url):
            raise ConfigError(f"not an RPC URL: {rpc_url!r} (expected http://host:port)")
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
        try:
            w3.eth.chain_id  # noqa: B018 - a round trip proves the node answers
        except Exception as exc:
            raise ChainError(f"no chain answers at {rpc_url}: {type(exc).__name__}") from exc
        return cls(w3, url=rpc_url)

    @property
    def is_embedded(self) -> bool:
        """True for the in-process eth-tester chain."""
        return self._tester is not None

    # ------------------------------------------------------------------ locking and time

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the client's lock across several calls that must not interleave.

        Anything the node or the connection raises inside becomes a :class:`ChainError`.
        """
        with self._lock:
            try:
                yield
            except FlopexError:
                raise
            except Exception as exc:
                raise map_revert(exc) from exc

    def now(self) -> int:
        """The latest block's timestamp."""
        with self.locked():
            self._sync_clock()
            return int(self.w3.eth.get_block("latest")["timestamp"])

    def _sync_clock(self) -> None:
        # The empty block this may mine only moves the clock up to the wall clock's: it wakes nobody
        # (every reader of the clock would otherwise wake every daemon once a second, each of
        # whose steps reads the clock); whoever waits on a deadline waits on the clock as well.
        if self._tester is not None:
            sync_tester_clock(self._tester)

    # ------------------------------------------------------------------ new blocks

    def _new_block(self) -> None:
        """Count a new block and tell whoever waits for one."""
        with self._blocks:
            self._blocks_seen += 1
            listeners = list(self._listeners)
            self._blocks.notify_all()
        for listener in listeners:
            listener()

    @property
    def blocks_seen(self) -> int:
        """How many new blocks this client has learnt of: compare two readings to know if one came."""
        with self._blocks:
            return self._blocks_seen

    def add_block_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (on the thread that learnt of it; keep it short) for every new block.

        On a JSON-RPC node this starts the client's block watcher, which runs while anyone listens.
        """
        with self._blocks:
            self._listeners.append(listener)
            if self._tester is None and (self._watcher is None or not self._watcher.is_alive()):
                self._watcher = threading.Thread(target=self._watch_blocks, name="chain-blocks", daemon=True)
                self._watcher.start()

    def remove_block_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener`` (a listener never added is ignored)."""
        with self._blocks:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def wait_for_block(self, seen: int, timeout: float) -> int:
        """Wait until this client learns of a block after reading ``seen`` from :attr:`blocks_seen`,
        or ``timeout`` seconds pass; returns :attr:`blocks_seen` then."""
        deadline = time.monotonic() + max(0.0, timeout)
        wake = threading.Event()
        self.add_block_listener(wake.set)
        try:
            while self.blocks_seen == seen:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wake.wait(remaining)
                wake.clear()
        finally:
            self.remove_block_listener(wake.set)
        return self.blocks_seen

    def _watch_blocks(self) -> None:
        """Ask a JSON-RPC node for its block number while anyone listens; tell them of each new one."""
        last: int | None = None
        pause = BLOCK_POLL_MIN_S
        while True:
            with self._blocks:
                if not self._listeners:
                    self._watcher = None
                    return
            number: int | None
            try:
                number = int(self.w3.eth.block_number)
            except Exception:  # an unreachable node: its listeners' own calls say so
                number = last
                pause = BLOCK_POLL_MAX_S
            if last is not None and number is not None and number > last:
                self._new_block()
                pause = BLOCK_POLL_MIN_S
            else:
                pause = min(BLOCK_POLL_MAX_S, pause * BLOCK_POLL_BACKOFF)
            last = number
            time.sleep(pause)

    def next_timestamp(self) -> int:
        """The time the next transaction is checked at: what deadlines are judged against now.

        On the embedded chain block times strictly increase, so a busy chain runs ahead of the
        wall clock (eth-tester mines a block per transaction, each at least a second after the
        last), and an idle chain's next block takes the wall clock (its pending block's time is
        kept up with it). On a JSON-RPC node it is the chain's own clock, never the wall clock:
        the pending block's timestamp, which calls and gas estimates run at (anvil with
        ``--block-time`` gives it the latest block's timestamp until the next block is mined; an
        automining node the wall clock), and never before the latest block's.
        """
        if self._tester is not None:
            return max(self.now() + 1, int(time.time()))
        with self.locked():
            latest = int(self.w3.eth.get_block("latest")["timestamp"])
            try:
                pending = int(self.w3.eth.get_block("pending")["timestamp"])
            except Exception:  # a node without a pending block: the latest one is what it has
                pending = latest
        return max(latest, pending)

    def block_number(self) -> int:
        """The latest block's number."""
        with self.locked():
            return int(self.w3.eth.block_number)

    def logs(self, addresses: list[str], first: int, last: int) -> list[Any]:
        """The logs of contracts ``addresses`` in blocks ``first..last``, as web3's ``get_logs`` gives them.

        eth-tester answers ``eth_getLogs`` by looking every transaction up from the head of the
        chain again, which takes time quadratic in the chain's length; on the embedded chain the
        blocks' receipts are read once each instead (same fields; ``logIndex`` counts in the block).
        """
        if self._tester is None:
            query: Any = {"address": addresses, "fromBlock": first, "toBlock": last}
            with self.locked():
                return list(self.w3.eth.get_logs(query))
        from eth_utils.address import to_canonical_address, to_checksum_address
        from hexbytes import HexBytes
        from web3.datastructures import AttributeDict

        wanted = {to_canonical_address(a) for a in addresses}
        found: list[Any] = []
        with self.locked():
            chain = self._tester.backend.chain
            for number in range(max(0, first), last + 1):
                block = chain.get_canonical_block_by_number(number)
                index = 0
                receipts = block.get_receipts(chain.chaindb)
                for position, (tx, receipt) in enumerate(zip(block.transactions, receipts, strict=True)):
                    for log in receipt.logs:
                        if log.address in wanted:
                            found.append(
                                AttributeDict(
                                    {
                                        "address": to_checksum_address(log.address),
                                        "topics": [HexBytes(t.to_bytes(32, "big")) for t in log.topics],
                                        "data": HexBytes(log.data),
                                        "blockNumber": number,
                                        "blockHash": HexBytes(block.hash),
                                        "transactionHash": HexBytes(tx.hash),
                                        "transactionIndex": position,
                                        "logIndex": index,
                                        "removed": False,
                                    }
                                )
                            )
                        index += 1
        return found

    def time_travel(self, seconds: int) -> int:
        """Move a dev chain's clock forward and mine a block; returns the new timestamp."""
        if seconds < 0:
            raise ConfigError("time only moves forward")
        with self.locked():
            target = self.now() + seconds
            if self._tester is not None:
                self._tester.time_travel(target)
                self._new_block()
            else:
                try:
                    self.w3.provider.make_request("evm_setNextBlockTimestamp", [target])  # type: ignore[arg-type]
                    self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
                except Exception as exc:
                    raise ChainError(f"this chain does not let its clock be moved: {exc}") from exc
            return self.now()

    def mine(self) -> None:
        """Mine an empty block on a dev chain (eth-tester, anvil, ``flopex chain up``).

        Raises :class:`ChainError` on a chain that does not mine on request.
        """
        with self.locked():
            if self._tester is not None:
                self._tester.mine_blocks(1)
                self._new_block()
                return
            response = self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
            if isinstance(response, dict) and response.get("error"):
                raise ChainError(f"this chain does not mine on request: {response['error']}")

    # ------------------------------------------------------------------ accounts

    def fund_ether(self, address: str, amount: int = DEV_ETHER) -> None:
        """Give ``address`` ether for gas on a dev chain (eth-tester or anvil)."""
        with self.locked():
            if self._tester is not None:
                source = self.w3.eth.accounts[0]
                self._tester.send_transaction({"from": source, "to": address, "value": amount, "gas": 21_000})
                self._new_block()
                return
            try:
                self.w3.provider.make_request("anvil_setBalance", [address, hex(amount)])  # type: ignore[arg-type]
            except Exception as exc:
                raise ChainError(f"cannot fund {address} on this chain: {exc}") from exc
            balance = self.w3.eth.get_balance(address)  # type: ignore[arg-type]
            if balance < amount:
                raise ChainError(f"this chain did not fund {address}; fund it with ether yourself")

    def balance_of_ether(self, address: str) -> int:
        """Ether balance of ``address`` in wei."""
        with self.locked():
            return int(self.w3.eth.get_balance(address))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ calls and transactions

    def call(self, fn: Any, *, sender: str | None = None, function: str | None = None) -> Any:
        """Run a contract function as a call; reverts become :class:`ContractRevert`."""
        with self.locked():
            self._sync_clock()
            try:
                return fn.call({"from": sender} if sender else {})
            except Exception as exc:
                raise map_revert(exc, function or getattr(fn, "fn_name", None)) from exc

    def transact(self, account: LocalAccount, fn: Any, *, value: int = 0, function: str | None = None) -> Any:
        """Sign and send a contract transaction from ``account`` and wait for its receipt.

        Gas is estimated first, so a transaction that would revert raises :class:`ContractRevert`
        with its reason and is never sent.
        """
        name = str(function or getattr(fn, "fn_name", "transaction"))
        with self.locked():
            floor = 0
            for attempt in range(OUT_OF_GAS_RETRIES + 1):
                self._sync_clock()
                try:
                    tx = fn.build_transaction(
                        {"from": account.address, "nonce": self._next_nonce(account.address), "value": value}
                    )
                except Exception as exc:
                    raise map_revert(exc, name) from exc
                tx["gas"] = max(gas_limit(int(tx["gas"]), self._block_gas_limit()), min(floor, self._block_gas_limit()))
                receipt = self._send(account, tx, name, check=False)
                if receipt["status"] == 1:
                    return receipt
                if attempt == OUT_OF_GAS_RETRIES or not _out_of_gas(receipt, int(tx["gas"])):
                    raise ContractRevert(self._replay_reason(tx, receipt), function=name)
                floor = 2 * int(tx["gas"])  # it ran out of gas: again, with at least twice as much
            raise AssertionError("unreachable")

    def deploy(self, account: LocalAccount, abi: list[dict[str, Any]], bytecode: str, *args: Any) -> Any:
        """Deploy a contract and return its receipt (``contractAddress`` is set)."""
        with self.locked():
            factory = self.w3.eth.contract(abi=abi, bytecode=bytecode)
            try:
                tx = factory.constructor(*args).build_transaction(
                    {"from": account.address, "nonce": self._next_nonce(account.address)}
                )
            except Exception as exc:
                raise map_revert(exc, "constructor") from exc
            tx["gas"] = gas_limit(int(tx["gas"]), self._block_gas_limit())
            receipt = self._send(account, tx, "constructor")
            if not self.w3.eth.get_code(receipt["contractAddress"]):
                raise ChainError("deployment left no code at its address")
            return receipt

    def _block_gas_limit(self) -> int:
        """The latest block's gas limit (read once: dev chains and testnets keep it)."""
        if self._gas_cap is None:
            self._gas_cap = int(self.w3.eth.get_block("latest")["gasLimit"])
        return self._gas_cap

    def _next_nonce(self, address: str) -> int:
        on_chain = int(self.w3.eth.get_transaction_count(address, "pending"))  # type: ignore[arg-type]
        nonce = max(on_chain, self._nonces.get(address, 0))
        return nonce

    def _send(self, account: LocalAccount, tx: dict[str, Any], name: str, *, check: bool = True) -> Any:
        """Sign, send and wait for ``tx``; with ``check``, a failed one raises :class:`ContractRevert`."""
        if "maxFeePerGas" in tx and tx["maxFeePerGas"] > DEFAULT_GAS_PRICE_CAP:
            raise ChainError(f"{name}: fee per gas {tx['maxFeePerGas']} above the cap {DEFAULT_GAS_PRICE_CAP}")
        signed = account.sign_transaction(tx)
        try:
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        except Exception as exc:
            raise map_revert(exc, name) from exc
        self._nonces[account.address] = int(tx["nonce"]) + 1
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120, poll_latency=0.05)
        except TimeExhausted as exc:
            raise ChainError(f"{name}: no receipt for {tx_hash.hex()} after 120 s") from exc
        self._new_block()  # the receipt is in a block: tell who waits for one at once
        if check and receipt["status"] != 1:
            raise ContractRevert(self._replay_reason(tx, receipt), function=name)
        return receipt

    def _replay_reason(self, tx: dict[str, Any], receipt: Any) -> str:
        """Find why a mined transaction failed by replaying it as a call at its block."""
        # Replayed on the state the block left: a transaction mined before it in the same block
        # (a competitor's settle, say) is what made it fail.
        call = {k: tx[k] for k in ("from", "to", "data", "value") if k in tx}
        try:
            self.w3.eth.call(call, receipt["blockNumber"])  # type: ignore[arg-type]
        except Exception as exc:
            return _reason_of(exc) or str(exc)
        return "reverted without a reason"

    # ------------------------------------------------------------------ helpers

    def wait_until(self, predicate: Callable[[], T], *, timeout: float, poll: float = 0.2) -> T:
        """Poll ``predicate`` until it returns a truthy value or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise ChainError(f"condition not met within {timeout:.0f} s")
            time.sleep(poll)

"""A local chain: the embedded eth-tester chain served over JSON-RPC on 127.0.0.1.

``flopex chain up`` runs :func:`serve`: it deploys flopex, funds the dev accounts, writes a
deployment file and answers JSON-RPC requests, so separate processes (providers, requesters,
verifiers) share one chain with zero set-up. Besides the standard ``eth_*`` methods it answers
``evm_mine`` and ``evm_setNextBlockTimestamp`` (as anvil does), so dev tooling can move its clock.

``eth_getLogs`` is answered from an index of the chain's logs (:class:`LogIndex`), kept up to date
block by block, rather than by eth-tester, which walks every block of the range and finds each
transaction's receipt by scanning the chain: on a chain of hours (a block a second while clients
poll) that took seconds per query, past the clients' timeout. Blocks without transactions cost a
header read once; a query costs the logs it returns. Transactions are looked up by hash in the same
index (eth-tester walks the chain back from its head for each receipt).

Contract code sees the wall clock: calls and gas estimates run on the pending block, and
transactions are mined in it, its time brought up to the wall clock without mining anything. Reads
of the block number or a block mine nothing, so a chain that daemons poll grows by a block per
transaction, not a block a second.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eth_abi.abi import encode
from hexbytes import HexBytes
from web3 import EthereumTesterProvider, Web3

__all__ = ["JsonRpcChainServer", "LogIndex"]

MAX_REQUEST_BYTES = 8 * 1024 * 1024
REVERT_PREFIX = "execution reverted: "
#: Methods that run contract code: it must see the wall clock as ``block.timestamp``. They run on
#: (or, for a transaction, are mined in) the pending block, its time brought up to the wall clock
#: without mining anything. Reads of the block number or a block mine nothing, so an idle chain that
#: clients poll does not grow.
CLOCKED = frozenset({"eth_call", "eth_estimateGas", "eth_sendRawTransaction", "eth_sendTransaction"})
ERROR_SELECTOR = bytes.fromhex("08c379a0")


def _jsonable(value: Any) -> Any:
    """JSON for the values eth-tester returns: bytes as 0x-hex, mappings as objects."""
    if isinstance(value, bytes | bytearray | HexBytes):
        return "0x" + bytes(value).hex()
    if hasattr(value, "items"):
        return dict(value.items())
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _error(message: str) -> dict[str, Any]:
    """A JSON-RPC error; a revert carries its reason ABI-encoded as Error(string), as nodes do."""
    if not message.startswith(REVERT_PREFIX):
        return {"code": -32000, "message": message}
    reason = message[len(REVERT_PREFIX) :]
    data = "0x" + (ERROR_SELECTOR + encode(["string"], [reason])).hex()
    return {"code": 3, "message": message, "data": data}


class LogIndex:
    """Every log of an eth-tester chain's mined blocks, in order, answering ``eth_getLogs`` filters.

    :meth:`update` reads the blocks mined since the last call straight from py-evm (a header per
    empty block; the receipts of blocks with transactions); :meth:`query` filters by block range,
    addresses and topics as JSON-RPC nodes do. Not thread-safe: the server calls it under its lock.
    """

    def __init__(self, tester: Any) -> None:
        self.tester = tester
        self.chain = tester.backend.chain
        self.next_block = 0
        self.logs: list[dict[str, Any]] = []
        self._blocks: list[int] = []  # block number of each entry of ``logs``, for bisecting
        self.transactions: dict[bytes, tuple[int, int]] = {}
        """Each mined transaction's hash: (block number, index in the block)."""

    def head(self) -> int:
        """The latest mined block's number."""
        return int(self.chain.get_block().number) - 1

    def update(self) -> None:
        """Index the blocks mined since the last update."""
        from eth.constants import BLANK_ROOT_HASH
        from eth_utils.address import to_checksum_address

        head = self.head()
        while self.next_block <= head:
            number = self.next_block
            header = self.chain.get_canonical_block_header_by_number(number)
            if header.transaction_root != BLANK_ROOT_HASH:
                block = self.chain.get_canonical_block_by_number(number)
                receipts = block.get_receipts(self.chain.chaindb)
                block_hash = "0x" + bytes(block.hash).hex()
                for tx_index, (tx, receipt) in enumerate(zip(block.transactions, receipts, strict=True)):
                    self.transactions[bytes(tx.hash)] = (number, tx_index)
                    for log_index, log in enumerate(receipt.logs):
                        self.logs.append(
                            {
                                "type": "mined",
                                "logIndex": log_index,
                                "transactionIndex": tx_index,
                                "transactionHash": "0x" + bytes(tx.hash).hex(),
                                "blockHash": block_hash,
                                "blockNumber": number,
                                "address": to_checksum_address(log.address),
                                "data": "0x" + bytes(log.data).hex(),
                                "topics": ["0x" + topic.to_bytes(32, "big").hex() for topic in log.topics],
                            }
                        )
                        self._blocks.append(number)
            self.next_block = number + 1

    def locate(self, transaction_hash: bytes) -> tuple[Any, Any, int]:
        """The (py-evm) block, transaction and its index for a hash, the pending block first.

        eth-tester finds a transaction by walking the chain back from its head, a block at a time:
        on a chain of days a receipt took seconds, and every request waited behind it. Raises
        eth-tester's ``TransactionNotFound`` for an unknown hash, as its own lookup does.
        """
        from eth_tester.exceptions import TransactionNotFound

        pending = self.chain.get_block()
        for index, tx in enumerate(pending.transactions):
            if tx.hash == transaction_hash:
                return pending, tx, index
        self.update()
        where = self.transactions.get(bytes(transaction_hash))
        if where is None:
            raise TransactionNotFound(f"No transaction found for transaction hash: 0x{bytes(transaction_hash).hex()}")
        block = self.chain.get_canonical_block_by_number(where[0])
        return block, block.transactions[where[1]], where[1]

    def install(self) -> None:
        """Make the tester's backend look transactions up here (:meth:`locate`) instead of walking the chain."""
        from eth_tester.backends.pyevm.serializers import serialize_transaction, serialize_transaction_receipt

        backend = self.tester.backend
        chain = self.chain

        def get_transaction_by_hash(transaction_hash: bytes) -> Any:
            block, tx, index = self.locate(transaction_hash)
            return serialize_transaction(block, tx, index, block.number == chain.get_block().number)

        def get_transaction_receipt(transaction_hash: bytes) -> Any:
            block, tx, index = self.locate(transaction_hash)
            receipts = block.get_receipts(chain.chaindb)
            pending = block.number == chain.get_block().number
            return serialize_transaction_receipt(block, receipts, tx, index, pending, chain.get_vm())

        backend.get_transaction_by_hash = get_transaction_by_hash
        backend.get_transaction_receipt = get_transaction_receipt

    def _block(self, tag: Any, default: int) -> int:
        if tag is None:
            return default
        if isinstance(tag, int):
            return tag
        if tag in ("latest", "pending", "safe", "finalized"):
            return self.head()
        if tag == "earliest":
            return 0
        return int(str(tag), 16)

    def query(self, criteria: dict[str, Any]) -> list[dict[str, Any]]:
        """The logs matching an ``eth_getLogs`` filter object (fromBlock, toBlock, address, topics)."""
        self.update()
        head = self.head()
        start = self._block(criteria.get("fromBlock"), head)
        end = self._block(criteria.get("toBlock"), head)
        address = criteria.get("address")
        addresses = None
        if address:
            addresses = {a.lower() for a in ([address] if isinstance(address, str) else address)}
        topics = criteria.get("topics") or []
        wanted: list[set[str] | None] = []
        for topic in topics:
            if topic is None:
                wanted.append(None)
            elif isinstance(topic, str):
                wanted.append({topic.lower()})
            else:
                options = {t.lower() for t in topic if t is not None}
                wanted.append(None if not options or None in topic else options)
        found = []
        for i in range(bisect.bisect_left(self._blocks, start), bisect.bisect_right(self._blocks, end)):
            log = self.logs[i]
            if addresses is not None and log["address"].lower() not in addresses:
                continue
            if len(wanted) > len(log["topics"]):
                continue
            if all(w is None or log["topics"][j].lower() in w for j, w in enumerate(wanted)):
                found.append(log)
        return found


def _estimate_on_pending(tester: Any) -> None:
    """Make the tester's gas estimates for ``latest`` run on the pending block, as its calls for ``pending`` do.

    eth-tester estimates on the latest mined block, whose time on an idle chain is the time of its
    last transaction: a transaction allowed only after a deadline would be estimated as reverting.
    The pending block holds the same state (every transaction is mined at once) at the wall clock.
    """
    from eth_tester.backends.pyevm.main import (
        EVMInvalidInstruction,
        EVMRevert,
        EVMSpoofTransaction,
        TransactionFailed,
        replace_exceptions,
    )

    backend = tester.backend
    own = type(backend).estimate_gas

    def estimate_gas(transaction: Any, block_number: Any = "latest") -> int:
        if block_number not in ("latest", "pending"):
            return int(own(backend, transaction, block_number))
        unsigned = backend._get_normalized_and_unsigned_evm_transaction({**transaction, "gas": 21000}, "latest")
        spoofed = EVMSpoofTransaction(unsigned, from_=transaction["from"])
        return int(backend.chain.estimate_gas(spoofed, backend.chain.header))

    # Reverts become TransactionFailed carrying the reason, as eth-tester's own estimate_gas does.
    backend.estimate_gas = replace_exceptions({EVMInvalidInstruction: TransactionFailed, EVMRevert: TransactionFailed})(
        estimate_gas
    )


class JsonRpcChainServer:
    """Serve an eth-tester chain over HTTP JSON-RPC; one request at a time reaches the chain."""

    def __init__(self, provider: EthereumTesterProvider, tester: Any, host: str = "127.0.0.1", port: int = 8545):
        self.provider = provider
        self.tester = tester
        # The provider's own middleware turns JSON-RPC's hex quantities into what eth-tester takes.
        w3 = Web3(provider, middleware=[])
        self._request = provider.request_func(w3, w3.middleware_onion)
        self._lock = threading.Lock()
        self.logs = LogIndex(tester)
        self.logs.install()
        _estimate_on_pending(tester)
        self.stats: dict[str, list[float]] = {}
        """Per method: [requests, seconds spent under the lock, seconds waiting for it]; ``flopex_stats`` answers it."""
        # eth-tester wants a sender that can afford gas even for calls; its first account can.
        self.default_sender = tester.get_accounts()[0]
        handler = self._handler_class()
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.httpd.server_address[1])

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_REQUEST_BYTES:
                    self._reply({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "too large"}})
                    return
                try:
                    request = json.loads(self.rfile.read(length))
                except json.JSONDecodeError:
                    self._reply({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}})
                    return
                if isinstance(request, list):
                    self._reply([server.handle(r) for r in request])
                else:
                    self._reply(server.handle(request))

            def _reply(self, body: Any) -> None:
                data = json.dumps(body, default=_jsonable).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def handle(self, request: Any) -> dict[str, Any]:
        """Answer one JSON-RPC request object."""
        if not isinstance(request, dict) or "method" not in request:
            return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "invalid request"}}
        rid = request.get("id")
        method = str(request["method"])
        params = request.get("params") or []
        if method == "flopex_stats":
            with self._lock:
                stats = {
                    m: {"requests": int(v[0]), "busy_s": round(v[1], 4), "waited_s": round(v[2], 4)}
                    for m, v in self.stats.items()
                }
            return {"jsonrpc": "2.0", "id": rid, "result": {"head": self.logs.head(), "methods": stats}}
        asked = time.perf_counter()
        with self._lock:
            began = time.perf_counter()
            try:
                return self._handle_locked(rid, method, params)
            finally:
                entry = self.stats.setdefault(method, [0, 0.0, 0.0])
                entry[0] += 1
                entry[1] += time.perf_counter() - began
                entry[2] += began - asked

    def _handle_locked(self, rid: Any, method: str, params: Any) -> dict[str, Any]:
        """Answer one request; the caller holds the lock."""
        try:
            if method in CLOCKED:
                self._clock_pending()
            if method == "eth_call" and params and (len(params) < 2 or params[1] in (None, "latest", "pending")):
                params = [params[0], "pending"]
            if method == "eth_getLogs" and params and isinstance(params[0], dict) and "blockHash" not in params[0]:
                return {"jsonrpc": "2.0", "id": rid, "result": self.logs.query(params[0])}
            if method == "evm_mine":
                self.tester.mine_blocks(1)
                return {"jsonrpc": "2.0", "id": rid, "result": "0x0"}
            if method == "evm_setNextBlockTimestamp":
                target = params[0]
                self.tester.time_travel(int(target, 16) if isinstance(target, str) else int(target))
                return {"jsonrpc": "2.0", "id": rid, "result": None}
            if method in ("eth_call", "eth_estimateGas") and params and isinstance(params[0], dict):
                # JSON-RPC lets calls omit the sender; eth-tester wants one.
                params = [{"from": self.default_sender, **params[0]}, *params[1:]]
            response = self._request(method, params)
        except Exception as exc:
            return {"jsonrpc": "2.0", "id": rid, "error": _error(str(exc))}
        body: dict[str, Any] = dict(response)
        body["id"] = rid
        if isinstance(body.get("error"), dict):
            body["error"] = _error(str(body["error"].get("message", "")))
        body.setdefault("jsonrpc", "2.0")
        return body

    def _clock_pending(self) -> None:
        """Bring the pending block's time up to the wall clock; nothing is mined."""
        chain = self.tester.backend.chain
        now = int(time.time())
        if chain.header.timestamp < now:
            chain.header = chain.header.copy(timestamp=now)

    def serve_forever(self) -> None:
        """Answer requests until :meth:`shutdown`."""
        self.httpd.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        """Stop answering and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()

"""A local chain: the embedded eth-tester chain served over JSON-RPC on 127.0.0.1.

``flopex chain up`` runs :func:`serve`: it deploys flopex, funds the dev accounts, writes a
deployment file and answers JSON-RPC requests, so separate processes (providers, requesters,
verifiers) share one chain with zero set-up. Besides the standard ``eth_*`` methods it answers
``evm_mine`` and ``evm_setNextBlockTimestamp`` (as anvil does), so dev tooling can move its clock.

``eth_getLogs`` is answered from an index of the chain's logs (:class:`LogIndex`), kept up to date
block by block, rather than by eth-tester, which walks every block of the range and finds each
transaction's receipt by scanning the chain: on a chain of hours (a block a second while clients
poll) that took seconds per query, past the clients' timeout. Blocks without transactions cost a
header read once; a query costs the logs it returns.
"""

from __future__ import annotations

import bisect
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eth_abi.abi import encode
from hexbytes import HexBytes
from web3 import EthereumTesterProvider, Web3

from marketplace.chain.client import sync_tester_clock

__all__ = ["JsonRpcChainServer", "LogIndex"]

MAX_REQUEST_BYTES = 8 * 1024 * 1024
REVERT_PREFIX = "execution reverted: "
#: Methods whose answer depends on the time: the chain's clock is brought up to the wall clock first.
CLOCKED = frozenset(
    {
        "eth_sendRawTransaction",
        "eth_sendTransaction",
        "eth_estimateGas",
        "eth_call",
        "eth_getBlockByNumber",
        "eth_blockNumber",
    }
)
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
        with self._lock:
            try:
                if method in CLOCKED:
                    sync_tester_clock(self.tester)
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

    def serve_forever(self) -> None:
        """Answer requests until :meth:`shutdown`."""
        self.httpd.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        """Stop answering and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()

"""A local chain: the embedded eth-tester chain served over JSON-RPC on 127.0.0.1.

``flopex chain up`` runs :func:`serve`: it deploys flopex, funds the dev accounts, writes a
deployment file and answers JSON-RPC requests, so separate processes (providers, requesters,
verifiers) share one chain with zero set-up. Besides the standard ``eth_*`` methods it answers
``evm_mine`` and ``evm_setNextBlockTimestamp`` (as anvil does), so dev tooling can move its clock.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eth_abi.abi import encode
from hexbytes import HexBytes
from web3 import EthereumTesterProvider, Web3

from marketplace.chain.client import sync_tester_clock

__all__ = ["JsonRpcChainServer"]

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


class JsonRpcChainServer:
    """Serve an eth-tester chain over HTTP JSON-RPC; one request at a time reaches the chain."""

    def __init__(self, provider: EthereumTesterProvider, tester: Any, host: str = "127.0.0.1", port: int = 8545):
        self.provider = provider
        self.tester = tester
        # The provider's own middleware turns JSON-RPC's hex quantities into what eth-tester takes.
        w3 = Web3(provider, middleware=[])
        self._request = provider.request_func(w3, w3.middleware_onion)
        self._lock = threading.Lock()
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
